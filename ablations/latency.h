#pragma once
// kvq bench: the kernel-timing grid of configs/paper_latency.yaml. For each shape,
// token count, method and kernel (scores q.K^T, outputs p.V, or the whole decode
// attention), builds the method's cache from seeded random data, times repeated calls
// after a warm-up, and writes one CSV row with the median time, the bytes of cache the
// kernel must read, the bandwidth, % of the copy bandwidth measured in the same run, and
// the speedups over fp16 and over the outer layout (kivi) measured in the same run.
// Backends: cpu (cpu_ref) and cuda (gpu/, ablations/latency_cuda.h; builds with KVQ_CUDA=ON).
#include <cstdint>
#include <string>
#include <vector>

namespace kvq::ablations {

struct LatencyShape {
  std::string name;
  int batch = 1, heads = 32, kv_heads = 32, head_dim = 128;
  std::vector<int> tokens;
};

struct LatencyConfig {
  std::string path, text, name;
  std::vector<LatencyShape> shapes;
  std::vector<std::string> methods;  // presets; the first fp16 and kivi rows give the speedups
  std::vector<std::string> kernels;  // qk, pv, attention
  std::string backend = "cpu";
  bool dependent_launch = true;  // cuda backend: kernels as programmatic dependent launches (gpu/dependent_launch.cuh)
  int repeats = 5;
  std::uint64_t seed = 0;
  std::string output;  // CSV path
};

// backend, when not empty, replaces the config's (kvq bench --backend); checked like the config key.
LatencyConfig load_latency_config(const std::string& path, const std::string& backend = "");
LatencyConfig parse_latency_config(const std::string& text, const std::string& path, const std::string& backend = "");

// Runs the grid (skipping token counts above max_tokens when > 0); writes config.output atomically.
void run_latency(const LatencyConfig& config, int max_tokens, bool progress, const std::string& command);

}  // namespace kvq::ablations
