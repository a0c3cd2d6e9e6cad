#pragma once
// Evaluation results as tables: one record per (spec, layer, kv head); the
// metric columns are defined once here and shared by CSV, JSON and text output.
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/spec.h"
#include "cpu_ref/evaluate.h"

namespace kvq::analysis {

struct EvalRecord {
  CacheSpec spec;
  int layer = 0;
  int kv_head = 0;
  cpu::HeadEval eval;
};

struct MetricColumn {
  std::string name;  // the result column, e.g. "kl"
  std::function<double(const cpu::HeadEval&)> get;
  bool lower_is_better = true;
};

// Every metric column in output order (docs/METRICS.md documents each name).
const std::vector<MetricColumn>& metric_columns();

// Tidy CSV: one row per record; spec keys as columns (k.mode, ..., key_norm), then metrics.
std::string results_csv(const std::vector<EvalRecord>& records);
// The same, piecewise: column names and one record's cells, keeping only `metrics` (all when empty).
std::vector<std::string> csv_columns(const std::vector<std::string>& metrics);
std::vector<std::string> csv_cells(const EvalRecord& record, const std::vector<std::string>& metrics);
// One CSV line (fields quoted where needed), newline-terminated.
std::string csv_line(const std::vector<std::string>& cells);
// Shortest text that reads back to the same double ("inf", "nan" for those).
std::string number_text(double v);
// Throws kvq::Error naming an unknown metric and the valid ones.
void check_metrics(const std::vector<std::string>& metrics);
// Records plus per-spec summaries; provenance is attached by the caller.
nlohmann::json results_json(const std::vector<EvalRecord>& records);

// Human-readable tables: per spec, mean over (layer, head) and the worst head by KL;
// with per_layer, also one line per layer for each spec.
std::string summary_text(const std::vector<EvalRecord>& records, bool per_layer);

}  // namespace kvq::analysis
