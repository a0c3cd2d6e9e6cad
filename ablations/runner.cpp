#include "ablations/runner.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>

#include "core/error.h"
#include "cpu_ref/evaluate.h"

namespace kvq::ablations {

std::vector<analysis::EvalRecord> run_eval(const data::DumpReader& dump, const std::vector<CacheSpec>& specs,
                                           const RunOptions& options) {
  const data::DumpInfo& info = dump.info();
  for (const auto& spec : specs) spec.validate(info.head_dim);
  const int T = info.seq_len;
  const int prefill = options.prefill < 0 ? std::max(0, T - 64) : options.prefill;
  if (prefill > T) fail("prefill: got {}, but {} has only {} tokens", prefill, dump.path(), T);
  const int decoded = T - prefill;
  const int evaluated = options.queries < 0 ? decoded : std::min(options.queries, decoded);
  cpu::EvalWindow window{prefill, T - evaluated};

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
  const int group = info.group_size();

#pragma omp parallel for schedule(dynamic)
  for (int task = 0; task < tasks; ++task) {
    const int layer = layers[static_cast<std::size_t>(task / heads)];
    const int head = task % heads;
    std::vector<float> keys, values;
    std::vector<std::vector<float>> queries(info.has_queries ? static_cast<std::size_t>(group) : 0);
    dump.read_slab(data::Dataset::keys, layer, head, keys);
    dump.read_slab(data::Dataset::values, layer, head, values);
    for (int g = 0; g < static_cast<int>(queries.size()); ++g)
      dump.read_slab(data::Dataset::queries, layer, head * group + g, queries[g]);
    cpu::HeadData data;
    data.seq_len = T;
    data.head_dim = info.head_dim;
    data.keys = keys.data();
    data.values = values.data();
    for (const auto& q : queries) data.queries.push_back(q.data());
    for (std::size_t s = 0; s < specs.size(); ++s) {
      // Spec-major order: all heads of the first spec, then the next.
      auto& record = records[s * tasks + task];
      record.spec = specs[s];
      record.layer = layer;
      record.kv_head = head;
      record.eval = cpu::evaluate_head(specs[s], data, window);
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
