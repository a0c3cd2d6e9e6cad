#pragma once
// Runs cache specs over a dump: tasks are (layer, kv head) slabs, evaluated in
// parallel with OpenMP; each slab is read once for all specs that need it, and
// records come back in (spec, layer, head) order whatever the thread count.
#include <vector>

#include "analysis/results.h"
#include "core/spec.h"
#include "cpu_ref/evaluate.h"
#include "data/kv_dump.h"

namespace kvq::ablations {

struct RunOptions {
  int prefill = -1;         // tokens prefilled; -1: all but the last 64
  int queries = -1;         // evaluate the last N decoded positions; -1: all decoded positions
  std::vector<int> layers;  // empty: all
  bool progress = false;    // a progress line on stderr
};

// The evaluation window for a dump of seq_len tokens: prefill < 0 means all but the last 64;
// queries < 0 means every decoded position. Throws kvq::Error for a prefill past the end.
cpu::EvalWindow eval_window(int seq_len, int prefill, int queries, const std::string& where);

// Omni-token scales (cpu::omni_token_scale) of one layer's keys or values: reads every kv head's slab.
std::vector<float> layer_omni_scale(const data::DumpReader& dump, data::Dataset dataset, int layer);

// Reads one (layer, kv head) slab (keys, values, the group's queries) once and evaluates every spec on it.
std::vector<cpu::HeadEval> evaluate_slab(const data::DumpReader& dump, int layer, int kv_head,
                                         const std::vector<CacheSpec>& specs, const cpu::EvalWindow& window);

std::vector<analysis::EvalRecord> run_eval(const data::DumpReader& dump, const std::vector<CacheSpec>& specs,
                                           const RunOptions& options);

}  // namespace kvq::ablations
