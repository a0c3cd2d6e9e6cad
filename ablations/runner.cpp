#include "ablations/runner.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <tuple>

#include "core/error.h"
#include "cpu_ref/evaluate.h"
#include "cpu_ref/tensor_cache.h"

namespace kvq::ablations {

cpu::EvalWindow eval_window(int seq_len, int prefill, int queries, const std::string& where) {
  const int p = prefill < 0 ? std::max(0, seq_len - 64) : prefill;
  if (p > seq_len) fail("prefill: got {}, but {} has only {} tokens", p, where, seq_len);
  const int decoded = seq_len - p;
  const int evaluated = queries < 0 ? decoded : std::min(queries, decoded);
  return {p, seq_len - evaluated};
}

std::vector<float> layer_omni_scale(const data::DumpReader& dump, data::Dataset dataset, int layer) {
  const data::DumpInfo& info = dump.info();
  std::vector<std::vector<float>> heads(static_cast<std::size_t>(info.num_kv_heads));
  std::vector<const float*> rows;
  for (int h = 0; h < info.num_kv_heads; ++h) {
    dump.read_slab(dataset, layer, h, heads[h]);
    rows.push_back(heads[h].data());
  }
  return cpu::omni_token_scale(rows, info.seq_len, info.head_dim);
}

std::vector<cpu::HeadEval> evaluate_slab(const data::DumpReader& dump, int layer, int kv_head,
                                         const std::vector<CacheSpec>& specs, const cpu::EvalWindow& window) {
  const data::DumpInfo& info = dump.info();
  const int group = info.group_size();
  std::vector<float> keys, values;
  std::vector<std::vector<float>> queries(info.has_queries ? static_cast<std::size_t>(group) : 0);
  dump.read_slab(data::Dataset::keys, layer, kv_head, keys);
  dump.read_slab(data::Dataset::values, layer, kv_head, values);
  for (int g = 0; g < static_cast<int>(queries.size()); ++g)
    dump.read_slab(data::Dataset::queries, layer, kv_head * group + g, queries[g]);
  cpu::HeadData data;
  data.seq_len = info.seq_len;
  data.head_dim = info.head_dim;
  data.keys = keys.data();
  data.values = values.data();
  for (const auto& q : queries) data.queries.push_back(q.data());
  // Omni-token scales need every kv head of the layer: read them only when a spec asks.
  std::vector<float> key_scale, value_scale;
  for (auto [dataset, member, out] : {std::tuple{data::Dataset::keys, &CacheSpec::k, &key_scale},
                                      std::tuple{data::Dataset::values, &CacheSpec::v, &value_scale}}) {
    bool wanted = false;
    for (const auto& spec : specs) wanted |= (spec.*member).token_scale == TokenScale::omni;
    if (wanted) *out = layer_omni_scale(dump, dataset, layer);
  }
  if (!key_scale.empty()) data.key_scale = key_scale.data();
  if (!value_scale.empty()) data.value_scale = value_scale.data();
  std::vector<cpu::HeadEval> out;
  for (const auto& spec : specs) out.push_back(cpu::evaluate_head(spec, data, window));
  return out;
}

std::vector<analysis::EvalRecord> run_eval(const data::DumpReader& dump, const std::vector<CacheSpec>& specs,
                                           const RunOptions& options) {
  const data::DumpInfo& info = dump.info();
  for (const auto& spec : specs) spec.validate(info.head_dim);
  const cpu::EvalWindow window = eval_window(info.seq_len, options.prefill, options.queries, dump.path());

  std::vector<int> layers = options.layers;
  if (layers.empty())
    for (int l = 0; l < info.num_layers; ++l) layers.push_back(l);
  for (int l : layers)
    if (l < 0 || l >= info.num_layers) fail("layers: {} is out of range 0..{}", l, info.num_layers - 1);

  const int heads = info.num_kv_heads;
  const int tasks = static_cast<int>(layers.size()) * heads;
  std::vector<analysis::EvalRecord> records(static_cast<std::size_t>(tasks) * specs.size());
  std::atomic<int> done{0};
  std::mutex print;
  const auto start = std::chrono::steady_clock::now();

#pragma omp parallel for schedule(dynamic)
  for (int task = 0; task < tasks; ++task) {
    const int layer = layers[static_cast<std::size_t>(task / heads)];
    const int head = task % heads;
    const auto evals = evaluate_slab(dump, layer, head, specs, window);
    for (std::size_t s = 0; s < specs.size(); ++s) {
      // Spec-major order: all heads of the first spec, then the next.
      records[s * tasks + task] = {specs[s], layer, head, evals[s]};
    }
    const int finished = ++done;
    if (options.progress) {
      std::lock_guard<std::mutex> lock(print);
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = finished / std::max(elapsed, 1e-9);
      std::fprintf(stderr, "\reval: %d/%d heads  %.1f heads/s  ETA %.0fs   ", finished, tasks, rate,
                   (tasks - finished) / rate);
      if (finished == tasks) std::fprintf(stderr, "\n");
    }
  }
  return records;
}

}  // namespace kvq::ablations
