#include "analysis/inspect.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace kvq::analysis {

std::vector<double> token_norm_imbalance(const std::vector<float>& keys, int seq_len, int head_dim, int group) {
  std::vector<double> ratios;
  for (int t0 = 0; t0 < seq_len; t0 += group) {
    const int t1 = std::min(seq_len, t0 + group);
    if (t1 - t0 < 2) break;
    double lo = std::numeric_limits<double>::infinity(), hi = 0;
    for (int t = t0; t < t1; ++t) {
      double n2 = 0;
      for (int c = 0; c < head_dim; ++c) n2 += static_cast<double>(keys[static_cast<std::size_t>(t) * head_dim + c]) *
                                              keys[static_cast<std::size_t>(t) * head_dim + c];
      lo = std::min(lo, std::sqrt(n2));
      hi = std::max(hi, std::sqrt(n2));
    }
    ratios.push_back(lo > 0 ? hi / lo : std::numeric_limits<double>::infinity());
  }
  return ratios;
}

std::vector<LayerStats> inspect_dump(const data::DumpReader& dump) {
  const auto& info = dump.info();
  const int T = info.seq_len, d = info.head_dim;
  std::vector<LayerStats> out(static_cast<std::size_t>(info.num_layers));
#pragma omp parallel for schedule(dynamic)
  for (int l = 0; l < info.num_layers; ++l) {
    LayerStats& s = out[l];
    s.layer = l;
    std::vector<OutlierChannel> channels;
    std::vector<double> imbalance;
    double vsum = 0, vsum2 = 0;
    std::vector<float> keys, values;
    for (int h = 0; h < info.num_kv_heads; ++h) {
      dump.read_slab(data::Dataset::keys, l, h, keys);
      dump.read_slab(data::Dataset::values, l, h, values);
      for (int c = 0; c < d; ++c) {
        double m = 0;
        for (int t = 0; t < T; ++t) m = std::max(m, std::fabs(static_cast<double>(keys[static_cast<std::size_t>(t) * d + c])));
        channels.push_back({h, c, m});
      }
      const auto r = token_norm_imbalance(keys, T, d, kImbalanceGroup);
      imbalance.insert(imbalance.end(), r.begin(), r.end());
      for (float v : values) {
        vsum += v;
        vsum2 += static_cast<double>(v) * v;
        s.value_max_abs = std::max(s.value_max_abs, std::fabs(static_cast<double>(v)));
      }
    }
    std::vector<double> maxima;
    for (const auto& ch : channels) maxima.push_back(ch.max_abs);
    std::nth_element(maxima.begin(), maxima.begin() + static_cast<std::ptrdiff_t>(maxima.size() / 2), maxima.end());
    const double median = maxima[maxima.size() / 2];
    std::sort(channels.begin(), channels.end(),
              [](const OutlierChannel& a, const OutlierChannel& b) { return a.max_abs > b.max_abs; });
    channels.resize(std::min<std::size_t>(3, channels.size()));
    s.top_channels = channels;
    s.outlier_ratio = median > 0 ? channels.front().max_abs / median : 0;
    if (!imbalance.empty()) {
      double sum = 0;
      for (double r : imbalance) {
        sum += r;
        s.imbalance_max = std::max(s.imbalance_max, r);
      }
      s.imbalance_mean = sum / static_cast<double>(imbalance.size());
    }
    const double n = static_cast<double>(info.num_kv_heads) * T * d;
    s.value_mean = vsum / n;
    s.value_std = std::sqrt(std::max(0.0, vsum2 / n - s.value_mean * s.value_mean));
  }
  return out;
}

namespace {
std::string chunk_text(const data::DatasetLayout& layout) {
  if (layout.chunk.empty()) return "contiguous";
  std::string text;
  for (auto c : layout.chunk) text += (text.empty() ? "" : "x") + std::to_string(c);
  return text;
}
}  // namespace

std::string inspect_text(const data::DumpReader& dump, const std::vector<LayerStats>& stats) {
  const auto& info = dump.info();
  std::string out = fmt::format("{}\n  model {}  source {}\n  layers {}  heads {}  kv heads {}  head_dim {}  seq_len {}",
                                dump.path(), info.model, info.source, info.num_layers, info.num_heads,
                                info.num_kv_heads, info.head_dim, info.seq_len);
  if (info.rope_theta) out += fmt::format("  rope_theta {}", *info.rope_theta);
  out += "\n";
  for (auto d : data::kAllDatasets) {
    if (!info.has(d)) continue;
    const auto layout = dump.layout(d);
    out += fmt::format("  {:<14} {:<8} chunks {:<14} compression {}\n", data::dataset_name(d), layout.dtype,
                       chunk_text(layout), layout.compression);
  }
  out += fmt::format("\n{:>5}  {:<40} {:>8}  {:>10} {:>10}  {:>9} {:>9} {:>9}\n", "layer",
                     "top |K| channels (head:channel=max)", "outlier", "imbal mean", "imbal max", "V mean", "V std",
                     "V max|v|");
  for (const auto& s : stats) {
    std::string top;
    for (const auto& c : s.top_channels) top += fmt::format("{}{}:{}={:.3g}", top.empty() ? "" : " ", c.kv_head, c.channel, c.max_abs);
    out += fmt::format("{:>5}  {:<40} {:>7.1f}x  {:>10.2f} {:>10.2f}  {:>9.3f} {:>9.3f} {:>9.3f}\n", s.layer, top,
                       s.outlier_ratio, s.imbalance_mean, s.imbalance_max, s.value_mean, s.value_std, s.value_max_abs);
  }
  out += fmt::format("\noutlier: largest per-channel max|K| over the median channel's; imbal: max/min key L2 norm "
                     "within {}-token groups (token-norm imbalance)\n",
                     kImbalanceGroup);
  return out;
}

nlohmann::json inspect_json(const data::DumpReader& dump, const std::vector<LayerStats>& stats) {
  const auto& info = dump.info();
  nlohmann::json j = {{"path", dump.path()},
                      {"model", info.model},
                      {"source", info.source},
                      {"num_layers", info.num_layers},
                      {"num_heads", info.num_heads},
                      {"num_kv_heads", info.num_kv_heads},
                      {"head_dim", info.head_dim},
                      {"seq_len", info.seq_len},
                      {"has_queries", info.has_queries},
                      {"has_keys_pre_rope", info.has_keys_pre_rope}};
  if (info.rope_theta) j["rope_theta"] = *info.rope_theta;
  for (auto d : data::kAllDatasets) {
    if (!info.has(d)) continue;
    const auto layout = dump.layout(d);
    j["datasets"][data::dataset_name(d)] = {{"dtype", layout.dtype}, {"chunk", layout.chunk},
                                            {"compression", layout.compression}};
  }
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& s : stats) {
    nlohmann::json top = nlohmann::json::array();
    for (const auto& c : s.top_channels) top.push_back({{"kv_head", c.kv_head}, {"channel", c.channel}, {"max_abs", c.max_abs}});
    layers.push_back({{"layer", s.layer},
                      {"top_channels", top},
                      {"outlier_ratio", s.outlier_ratio},
                      {"imbalance_mean", std::isfinite(s.imbalance_mean) ? nlohmann::json(s.imbalance_mean) : nlohmann::json(nullptr)},
                      {"imbalance_max", std::isfinite(s.imbalance_max) ? nlohmann::json(s.imbalance_max) : nlohmann::json(nullptr)},
                      {"value_mean", s.value_mean},
                      {"value_std", s.value_std},
                      {"value_max_abs", s.value_max_abs}});
  }
  j["layers"] = layers;
  return j;
}

}  // namespace kvq::analysis
