#include "analysis/results.h"

#include <algorithm>
#include <cmath>
#include <map>

#include <fmt/format.h>

#include "core/error.h"

namespace kvq::analysis {

const std::vector<MetricColumn>& metric_columns() {
  using E = cpu::HeadEval;
  static const std::vector<MetricColumn> columns = {
      {"k_bits", [](const E& e) { return e.key_bits; }},
      {"v_bits", [](const E& e) { return e.value_bits; }},
      {"k_mse", [](const E& e) { return e.keys.mse; }},
      {"k_rel_fro", [](const E& e) { return e.keys.rel_fro; }},
      {"k_max_abs", [](const E& e) { return e.keys.max_abs; }},
      {"k_snr_db", [](const E& e) { return e.keys.snr_db; }, false},
      {"v_mse", [](const E& e) { return e.values.mse; }},
      {"v_rel_fro", [](const E& e) { return e.values.rel_fro; }},
      {"v_max_abs", [](const E& e) { return e.values.max_abs; }},
      {"v_snr_db", [](const E& e) { return e.values.snr_db; }, false},
      {"score_abs", [](const E& e) { return e.score_abs.mean(); }},
      {"score_rel", [](const E& e) { return e.score_rel.mean(); }},
      {"kl", [](const E& e) { return e.kl.mean(); }},
      {"kl_max", [](const E& e) { return e.kl.count ? e.kl.max : 0.0; }},
      {"tv", [](const E& e) { return e.tv.mean(); }},
      {"tv_max", [](const E& e) { return e.tv.count ? e.tv.max : 0.0; }},
      {"top8", [](const E& e) { return e.top8.mean(); }, false},
      {"top32", [](const E& e) { return e.top32.mean(); }, false},
      {"out_rel", [](const E& e) { return e.out_rel.mean(); }},
      {"tv_bound", [](const E& e) { return e.tv_bound.mean(); }},
      {"bound_ratio", [](const E& e) { return e.bound_ratio.mean(); }},
      {"k_imbalance_in", [](const E& e) { return e.key_imbalance_in; }},
      {"k_imbalance", [](const E& e) { return e.key_imbalance; }},
      {"k_outlier_in", [](const E& e) { return e.key_outlier_in; }},
      {"k_outlier", [](const E& e) { return e.key_outlier; }},
      {"queries", [](const E& e) { return static_cast<double>(e.positions); }, false},
  };
  return columns;
}

std::string number_text(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (std::isnan(v)) return "nan";
  return fmt::format("{}", v);
}

namespace {
nlohmann::json json_number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

bool wanted(const std::vector<std::string>& metrics, const std::string& name) {
  return metrics.empty() || std::find(metrics.begin(), metrics.end(), name) != metrics.end();
}
}  // namespace

void check_metrics(const std::vector<std::string>& metrics) {
  std::vector<std::string> valid;
  for (const auto& c : metric_columns()) valid.push_back(c.name);
  for (const auto& m : metrics) {
    if (std::find(valid.begin(), valid.end(), m) != valid.end()) continue;
    std::string list;
    for (const auto& v : valid) list += (list.empty() ? "" : ", ") + v;
    const std::string near = closest_key(m, valid);
    fail("metrics: unknown '{}'{}; expected some of {}", m, near.empty() ? "" : " (did you mean '" + near + "'?)", list);
  }
}

std::vector<std::string> csv_columns(const std::vector<std::string>& metrics) {
  std::vector<std::string> out = {"preset", "layer", "kv_head"};
  for (const auto& [key, value] : spec_fields(CacheSpec{})) out.push_back(key);
  for (const auto& column : metric_columns())
    if (wanted(metrics, column.name)) out.push_back(column.name);
  return out;
}

std::vector<std::string> csv_cells(const EvalRecord& r, const std::vector<std::string>& metrics) {
  std::vector<std::string> out = {label(r.spec), std::to_string(r.layer), std::to_string(r.kv_head)};
  for (const auto& [key, value] : spec_fields(r.spec)) out.push_back(value);
  for (const auto& column : metric_columns())
    if (wanted(metrics, column.name)) out.push_back(number_text(column.get(r.eval)));
  return out;
}

std::string csv_line(const std::vector<std::string>& cells) {
  std::string line;
  for (std::size_t i = 0; i < cells.size(); ++i) line += (i ? "," : "") + csv_field(cells[i]);
  return line + "\n";
}

std::string results_csv(const std::vector<EvalRecord>& records) {
  std::string out = csv_line(csv_columns({}));
  for (const auto& r : records) out += csv_line(csv_cells(r, {}));
  return out;
}

namespace {
struct Summary {
  std::map<std::string, double> mean;
  const EvalRecord* worst = nullptr;  // highest mean KL, then highest value rel_fro
  int count = 0;
};

std::vector<std::pair<std::string, Summary>> summarize(const std::vector<EvalRecord>& records) {
  std::vector<std::pair<std::string, Summary>> out;
  std::map<std::string, std::size_t> index;
  for (const auto& r : records) {
    const std::string name = label(r.spec);
    if (!index.count(name)) {
      index[name] = out.size();
      out.emplace_back(name, Summary{});
    }
    Summary& s = out[index[name]].second;
    for (const auto& column : metric_columns()) s.mean[column.name] += column.get(r.eval);
    ++s.count;
    auto badness = [](const EvalRecord& e) { return std::make_pair(e.eval.kl.mean(), e.eval.values.rel_fro); };
    if (!s.worst || badness(r) > badness(*s.worst)) s.worst = &r;
  }
  for (auto& [name, s] : out)
    for (auto& [key, value] : s.mean) value /= s.count;
  return out;
}
}  // namespace

nlohmann::json results_json(const std::vector<EvalRecord>& records) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& r : records) {
    nlohmann::json row = {{"preset", label(r.spec)}, {"layer", r.layer}, {"kv_head", r.kv_head}};
    for (const auto& [key, value] : spec_fields(r.spec)) row[key] = value;
    for (const auto& column : metric_columns()) row[column.name] = json_number(column.get(r.eval));
    rows.push_back(row);
  }
  nlohmann::json summaries = nlohmann::json::object();
  for (const auto& [name, s] : summarize(records)) {
    nlohmann::json mean = nlohmann::json::object();
    for (const auto& [key, value] : s.mean) mean[key] = json_number(value);
    summaries[name] = {{"spec", describe(s.worst->spec)},
                       {"mean", mean},
                       {"worst_head", {{"layer", s.worst->layer}, {"kv_head", s.worst->kv_head},
                                       {"kl", json_number(s.worst->eval.kl.mean())}}}};
  }
  return {{"rows", rows}, {"summary", summaries}};
}

std::string summary_text(const std::vector<EvalRecord>& records, bool per_layer) {
  std::string out = fmt::format("{:<16} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>14}\n", "preset",
                                "k_bits", "v_bits", "k_rel_fro", "v_rel_fro", "kl", "tv", "top8", "out_rel",
                                "worst(l,h):kl");
  for (const auto& [name, s] : summarize(records)) {
    auto m = [&](const char* key) { return s.mean.at(key); };
    out += fmt::format("{:<16} {:>6.2f} {:>6.2f} {:>10.3e} {:>10.3e} {:>10.3e} {:>10.3e} {:>8.3f} {:>10.3e} {:>14}\n",
                       name, m("k_bits"), m("v_bits"), m("k_rel_fro"), m("v_rel_fro"), m("kl"), m("tv"), m("top8"),
                       m("out_rel"),
                       fmt::format("({},{}):{:.2e}", s.worst->layer, s.worst->kv_head, s.worst->eval.kl.mean()));
  }
  if (per_layer) {
    out += fmt::format("\n{:<16} {:>5} {:>10} {:>10} {:>10} {:>10}\n", "preset", "layer", "k_rel_fro", "v_rel_fro",
                       "kl", "out_rel");
    std::map<std::pair<std::string, int>, std::pair<std::array<double, 4>, int>> layers;
    std::vector<std::pair<std::string, int>> order;
    for (const auto& r : records) {
      const auto key = std::make_pair(label(r.spec), r.layer);
      if (!layers.count(key)) order.push_back(key);
      auto& [sums, n] = layers[key];
      sums[0] += r.eval.keys.rel_fro;
      sums[1] += r.eval.values.rel_fro;
      sums[2] += r.eval.kl.mean();
      sums[3] += r.eval.out_rel.mean();
      ++n;
    }
    for (const auto& key : order) {
      const auto& [sums, n] = layers[key];
      out += fmt::format("{:<16} {:>5} {:>10.3e} {:>10.3e} {:>10.3e} {:>10.3e}\n", key.first, key.second, sums[0] / n,
                         sums[1] / n, sums[2] / n, sums[3] / n);
    }
  }
  return out;
}

}  // namespace kvq::analysis
