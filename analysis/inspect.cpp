#include "analysis/inspect.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "core/error.h"
#include "core/metrics.h"
#include "core/rotation.h"
#include "cpu_ref/tensor_cache.h"

namespace kvq::analysis {

namespace {
// Mean and maximum of the imbalance ratios (an empty list leaves both 0).
void summarize(const std::vector<double>& ratios, double& mean, double& max) {
  if (ratios.empty()) return;
  double sum = 0;
  for (double r : ratios) {
    sum += r;
    max = std::max(max, r);
  }
  mean = sum / static_cast<double>(ratios.size());
}
}  // namespace

std::vector<LayerStats> inspect_dump(const data::DumpReader& dump, const InspectOptions& options) {
  const auto& info = dump.info();
  const int T = info.seq_len, d = info.head_dim;
  TensorSpec transform;
  transform.rotation = options.rotation;
  transform.token_scale = options.token_scale;
  if (options.rotation != Rotation::none && (d & (d - 1)) != 0) {
    fail("head_dim: {} in {} is not a power of two, which rotation={} needs", d, dump.path(), to_string(options.rotation));
  }
  const Rotator rotator(options.rotation, d, rotation_stream(options.rotation_seed, TensorKind::key));
  std::vector<LayerStats> out(static_cast<std::size_t>(info.num_layers));
#pragma omp parallel for schedule(dynamic)
  for (int l = 0; l < info.num_layers; ++l) {
    LayerStats& s = out[l];
    s.layer = l;
    std::vector<OutlierChannel> channels;
    std::vector<double> maxima, maxima_after, imbalance, imbalance_after;
    double vsum = 0, vsum2 = 0;
    std::vector<std::vector<float>> keys(static_cast<std::size_t>(info.num_kv_heads));
    std::vector<const float*> heads;
    std::vector<float> values;
    for (int h = 0; h < info.num_kv_heads; ++h) {
      dump.read_slab(data::Dataset::keys, l, h, keys[h]);
      heads.push_back(keys[h].data());
      dump.read_slab(data::Dataset::values, l, h, values);
      for (float v : values) {
        vsum += v;
        vsum2 += static_cast<double>(v) * v;
        s.value_max_abs = std::max(s.value_max_abs, std::fabs(static_cast<double>(v)));
      }
    }
    const std::vector<float> omni = cpu::omni_token_scale(heads, T, d);
    for (int h = 0; h < info.num_kv_heads; ++h) {
      const auto m = channel_max_abs(keys[h].data(), T, d);
      for (int c = 0; c < d; ++c) channels.push_back({h, c, m[c]});
      maxima.insert(maxima.end(), m.begin(), m.end());
      const auto r = token_norm_imbalance(keys[h].data(), T, d, kImbalanceGroup);
      imbalance.insert(imbalance.end(), r.begin(), r.end());
      const auto after = cpu::scale_and_rotate(transform, rotator, keys[h].data(), T, d, omni.data(), nullptr);
      const auto ma = channel_max_abs(after.data(), T, d);
      maxima_after.insert(maxima_after.end(), ma.begin(), ma.end());
      const auto ra = token_norm_imbalance(after.data(), T, d, kImbalanceGroup);
      imbalance_after.insert(imbalance_after.end(), ra.begin(), ra.end());
    }
    std::sort(channels.begin(), channels.end(),
              [](const OutlierChannel& a, const OutlierChannel& b) { return a.max_abs > b.max_abs; });
    channels.resize(std::min<std::size_t>(3, channels.size()));
    s.top_channels = channels;
    s.outlier_ratio = channel_outlier_ratio(maxima);
    s.outlier_ratio_after = channel_outlier_ratio(maxima_after);
    summarize(imbalance, s.imbalance_mean, s.imbalance_max);
    summarize(imbalance_after, s.imbalance_mean_after, s.imbalance_max_after);
    const double n = static_cast<double>(info.num_kv_heads) * T * d;
    s.value_mean = vsum / n;
    s.value_std = std::sqrt(std::max(0.0, vsum2 / n - s.value_mean * s.value_mean));
  }
  return out;
}

namespace {
nlohmann::json finite(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

std::string chunk_text(const data::DatasetLayout& layout) {
  if (layout.chunk.empty()) return "contiguous";
  std::string text;
  for (auto c : layout.chunk) text += (text.empty() ? "" : "x") + std::to_string(c);
  return text;
}
}  // namespace

std::string inspect_text(const data::DumpReader& dump, const std::vector<LayerStats>& stats,
                         const InspectOptions& options) {
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
  out += fmt::format("\n{:>5}  {:<40} {:>8} {:>8}  {:>10} {:>10} {:>10} {:>10}  {:>9} {:>9} {:>9}\n", "layer",
                     "top |K| channels (head:channel=max)", "outlier", "->after", "imbal mean", "->after",
                     "imbal max", "->after", "V mean", "V std", "V max|v|");
  for (const auto& s : stats) {
    std::string top;
    for (const auto& c : s.top_channels) top += fmt::format("{}{}:{}={:.3g}", top.empty() ? "" : " ", c.kv_head, c.channel, c.max_abs);
    out += fmt::format("{:>5}  {:<40} {:>7.1f}x {:>7.1f}x  {:>10.2f} {:>10.2f} {:>10.2f} {:>10.2f}  {:>9.3f} {:>9.3f} {:>9.3f}\n",
                       s.layer, top, s.outlier_ratio, s.outlier_ratio_after, s.imbalance_mean, s.imbalance_mean_after,
                       s.imbalance_max, s.imbalance_max_after, s.value_mean, s.value_std, s.value_max_abs);
  }
  out += fmt::format("\noutlier: largest per-channel max|K| over the median channel's; imbal: max/min key L2 norm "
                     "within {}-token groups (token-norm imbalance);\n->after: the same after token_scale={} and "
                     "rotation={} (what that quantizer sees)\n",
                     kImbalanceGroup, to_string(options.token_scale), to_string(options.rotation));
  return out;
}

nlohmann::json inspect_json(const data::DumpReader& dump, const std::vector<LayerStats>& stats,
                            const InspectOptions& options) {
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
  j["after"] = {{"rotation", to_string(options.rotation)},
                {"token_scale", to_string(options.token_scale)},
                {"rotation_seed", options.rotation_seed}};
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
                      {"outlier_ratio_after", s.outlier_ratio_after},
                      {"imbalance_mean_after", finite(s.imbalance_mean_after)},
                      {"imbalance_max_after", finite(s.imbalance_max_after)},
                      {"value_mean", s.value_mean},
                      {"value_std", s.value_std},
                      {"value_max_abs", s.value_max_abs}});
  }
  j["layers"] = layers;
  return j;
}

}  // namespace kvq::analysis
