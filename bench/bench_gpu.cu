// GPU GEMV kernels, paper shape (batch 1 x 32 heads, head_dim 128) and serving shape (batch 16,
// 32 query heads on 8 kv heads): fp16 baselines, InnerQ keys (3-bit sym, channel groups) for
// q.K^T, InnerQ values (2-bit hybrid, token groups) for p.V. CUDA events around each call,
// warm-up, median of repetitions (--benchmark_repetitions), input buffers rotated over at least
// 4x the L2; counters: us, GB/s of cache read, % of the device-to-device copy bandwidth
// measured at start-up. Run: build/bench/bench_gpu --benchmark_repetitions=5.
#include <benchmark/benchmark.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <random>
#include <vector>

#include "gpu/device.h"
#include "gpu/gemv.h"
#include "gpu/pack.h"
#include "gpu/rotate.h"

namespace {

#define BENCH_CUDA(call)                                                   \
  do {                                                                     \
    const cudaError_t e = (call);                                          \
    if (e != cudaSuccess) {                                                \
      state.SkipWithError(cudaGetErrorString(e));                          \
      return;                                                              \
    }                                                                      \
  } while (0)

double g_copy_bandwidth = 0;  // bytes/s, read + write of a device-to-device copy
kvq::gpu::DeviceInfo g_device;

double measure_copy_bandwidth() {
  const std::size_t n = std::size_t{1} << 30;
  void *a, *b;
  if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) return 0;
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> ms;
  for (int i = 0; i < 6; ++i) {
    cudaEventRecord(start);
    cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t;
    cudaEventElapsedTime(&t, start, stop);
    if (i) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaFree(a);
  cudaFree(b);
  return 2.0 * n / (ms[ms.size() / 2] * 1e-3);
}

// innerq_scores_scaled: the rotation family's scores, with a token scale per key (q rotated beforehand).
// CUDA events around each call of launch(copy), copies taken in turn; sets the manual time and the
// GB/s and roofline_% counters from the bytes one call moves.
template <typename Launch>
void time_calls(benchmark::State& state, Launch launch, int copies, double bytes) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  int c = 0;
  for (auto _ : state) {
    cudaEventRecord(start);
    const cudaError_t e = launch(c);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    if (e != cudaSuccess) {
      state.SkipWithError(cudaGetErrorString(e));
      break;
    }
    float ms;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms * 1e-3);
    c = (c + 1) % copies;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  // Time (the benchmark's own column) is µs per call; these are per-call rates from the manual times.
  state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["roofline_%"] = benchmark::Counter(100.0 * bytes / g_copy_bandwidth, benchmark::Counter::kIsIterationInvariantRate);
}

// innerq_scores_{tensor,cuda}_cores: the same product on each kernel, for the ratio.
enum class Kernel { fp16_scores, fp16_outputs, innerq_scores, innerq_outputs, innerq_scores_scaled, innerq_scores_tensor_cores, innerq_scores_cuda_cores };

struct Shape {
  int regions, group;
};

// Times one kernel; `bytes` is the cache it must read per call.
void run(benchmark::State& state, Kernel kernel, Shape shape) {
  const int n = static_cast<int>(state.range(0)), d = 128;
  const int regions = shape.regions, group = shape.group;
  if (kvq::gpu::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const bool scaled = kernel == Kernel::innerq_scores_scaled;
  const bool forced = kernel == Kernel::innerq_scores_cuda_cores || kernel == Kernel::innerq_scores_tensor_cores;
  const bool keys = kernel == Kernel::innerq_scores || kernel == Kernel::fp16_scores || scaled || forced;
  const bool quantized = kernel == Kernel::innerq_scores || kernel == Kernel::innerq_outputs || scaled || forced;
  kvq::gpu::RegionShape s;
  s.tokens = n;
  s.head_dim = d;
  s.group_size = 32;
  s.channel_axis = keys;
  s.bits = keys ? 3 : 2;
  s.mode = keys ? kvq::gpu::GroupMode::sym : kvq::gpu::GroupMode::hybrid;
  s.hybrid_asym_bits = 1;
  const std::size_t fp16_bytes = static_cast<std::size_t>(regions) * n * d * 2;
  // Hybrid values: about a quarter of the groups store a zero point (random data).
  const std::size_t bytes = quantized ? regions * (s.code_words() * 4 + s.groups() * 2 + (keys ? 0 : s.groups() * 2 / 4 + s.zero_blocks() * 4) +
                                                   (scaled ? static_cast<std::size_t>(n) * 4 : 0))
                                      : fp16_bytes;
  // Buffers rotated so that the set exceeds 4x the L2.
  const int copies = static_cast<int>(std::max<std::size_t>(1, (4 * g_device.l2_bytes + bytes - 1) / bytes));
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal;
  std::vector<kvq::gpu::DeviceRegions> packed(static_cast<std::size_t>(copies));
  std::vector<__half*> halves(static_cast<std::size_t>(copies), nullptr);
  // One seeded host buffer for every benchmark (generated once, sliced): setup stays cheap.
  static std::vector<float> source;
  const std::size_t count = static_cast<std::size_t>(regions) * n * d;
  if (source.size() < count) {
    source.resize(count);
    for (auto& x : source) x = normal(rng);
  }
  float* rows = nullptr;
  BENCH_CUDA(cudaMalloc(&rows, count * sizeof(float)));
  BENCH_CUDA(cudaMemcpy(rows, source.data(), count * sizeof(float), cudaMemcpyHostToDevice));
  std::vector<__half> host_half(quantized ? 0 : count);
  for (std::size_t i = 0; i < host_half.size(); ++i) host_half[i] = __float2half(source[i]);
  for (int c = 0; c < copies; ++c) {
    if (quantized) {
      auto& r = packed[c];
      r.shape = s;
      r.regions = regions;
      BENCH_CUDA(cudaMalloc(&r.codes, 4 * regions * s.code_words()));
      BENCH_CUDA(cudaMalloc(&r.scales, 2 * regions * s.groups()));
      BENCH_CUDA(cudaMalloc(&r.zeros, 2 * regions * s.groups()));
      BENCH_CUDA(cudaMalloc(&r.zero_offset, 4 * regions));
      BENCH_CUDA(cudaMalloc(&r.zero_base, 4 * regions * s.zero_blocks()));
      BENCH_CUDA(kvq::gpu::pack({rows, r}));
    } else {
      BENCH_CUDA(cudaMalloc(&halves[c], fp16_bytes));
      BENCH_CUDA(cudaMemcpy(halves[c], host_half.data(), fp16_bytes, cudaMemcpyHostToDevice));
    }
  }
  const int splits = kvq::gpu::output_splits(regions, n, g_device.multiprocessors);
  float* token_scale = nullptr;
  if (scaled) {
    BENCH_CUDA(cudaMalloc(&token_scale, static_cast<std::size_t>(regions) * n * sizeof(float)));
    BENCH_CUDA(cudaMemcpy(token_scale, source.data(), static_cast<std::size_t>(regions) * n * sizeof(float), cudaMemcpyHostToDevice));
  }
  float *vectors, *out, *partial;
  const std::size_t vec = static_cast<std::size_t>(regions) * group * (keys ? d : n);
  BENCH_CUDA(cudaMalloc(&vectors, vec * sizeof(float)));
  std::vector<float> host_vec(vec);
  for (auto& x : host_vec) x = std::fabs(normal(rng)) / n;
  BENCH_CUDA(cudaMemcpy(vectors, host_vec.data(), vec * sizeof(float), cudaMemcpyHostToDevice));
  BENCH_CUDA(cudaMalloc(&out, static_cast<std::size_t>(regions) * group * std::max(n, d) * sizeof(float)));
  BENCH_CUDA(cudaMalloc(&partial, static_cast<std::size_t>(splits) * regions * group * d * sizeof(float)));
  auto launch = [&](int c) {
    if (kernel == Kernel::innerq_scores) return kvq::gpu::scores_inner({packed[c], vectors, group, out});
    if (scaled) return kvq::gpu::scores_inner({packed[c], vectors, group, out, token_scale});
    if (forced) {
      return kvq::gpu::scores_inner({packed[c], vectors, group, out, nullptr,
                                     kernel == Kernel::innerq_scores_cuda_cores ? kvq::gpu::ScoresKernel::cuda_cores
                                                                                : kvq::gpu::ScoresKernel::tensor_cores});
    }
    if (kernel == Kernel::innerq_outputs) {
      kvq::gpu::OutputsParams p;
      p.values = packed[c];
      p.probs = vectors;
      p.group = group;
      p.outputs = out;
      p.partial = partial;
      p.splits = splits;
      return kvq::gpu::outputs_inner(p);
    }
    kvq::gpu::Fp16Params p{halves[c], regions, n, d, group, vectors, out, partial, splits};
    return kernel == Kernel::fp16_scores ? kvq::gpu::scores_fp16(p) : kvq::gpu::outputs_fp16(p);
  };
  for (int c = 0; c < copies; ++c) BENCH_CUDA(launch(c));  // warm-up
  BENCH_CUDA(cudaDeviceSynchronize());
  time_calls(state, launch, copies, static_cast<double>(bytes));
  state.counters["MB"] = static_cast<double>(bytes) / 1e6;
  for (auto& r : packed) cudaFree(r.codes), cudaFree(r.scales), cudaFree(r.zeros), cudaFree(r.zero_offset), cudaFree(r.zero_base);
  for (auto* h : halves) cudaFree(h);
  cudaFree(rows);
  cudaFree(vectors);
  cudaFree(out);
  cudaFree(partial);
  cudaFree(token_scale);
}

// The fast Walsh-Hadamard transform with per-token scaling of every key row at pack time
// (rotation family): reads and writes regions x n x 128 fp32.
void rotate_keys(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0)), d = 128, regions = 32;
  if (kvq::gpu::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const std::size_t count = static_cast<std::size_t>(regions) * n;
  float *rows, *signs, *sigma;
  BENCH_CUDA(cudaMalloc(&rows, count * d * sizeof(float)));
  BENCH_CUDA(cudaMemset(rows, 0, count * d * sizeof(float)));
  BENCH_CUDA(cudaMalloc(&signs, d * sizeof(float)));
  std::vector<float> ones(d, 1.0f);
  BENCH_CUDA(cudaMemcpy(signs, ones.data(), d * sizeof(float), cudaMemcpyHostToDevice));
  BENCH_CUDA(cudaMalloc(&sigma, count * sizeof(float)));
  kvq::gpu::RotateParams p;
  p.rows = rows;
  p.count = static_cast<long long>(count);
  p.head_dim = d;
  p.signs = signs;
  p.scale = kvq::gpu::TokenScaleMode::head;
  p.token_scale = sigma;
  BENCH_CUDA(kvq::gpu::rotate_rows(p));
  time_calls(state, [&](int) { return kvq::gpu::rotate_rows(p); }, 1, 2.0 * count * d * sizeof(float));
  cudaFree(rows);
  cudaFree(signs);
  cudaFree(sigma);
}

const Shape kPaper{32, 1};
const Shape kServing{16 * 8, 4};

void paper_args(benchmark::internal::Benchmark* b) {
  for (int n = 512; n <= 32768; n *= 2) b->Arg(n);
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}
void serving_args(benchmark::internal::Benchmark* b) {
  for (int n = 4096; n <= 32768; n *= 2) b->Arg(n);
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}

BENCHMARK_CAPTURE(run, paper_fp16_qk, Kernel::fp16_scores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_innerq_k3sym_qk, Kernel::innerq_scores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_innerq_k3sym_tensorcores_qk, Kernel::innerq_scores_tensor_cores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_innerq_k3sym_cudacores_qk, Kernel::innerq_scores_cuda_cores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_fp16_pv, Kernel::fp16_outputs, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_innerq_v2hybrid_pv, Kernel::innerq_outputs, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_rotated_k3sym_scaled_qk, Kernel::innerq_scores_scaled, kPaper)->Apply(paper_args);
BENCHMARK(rotate_keys)->Arg(4096)->Arg(32768)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(run, serving_fp16_qk, Kernel::fp16_scores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_innerq_k3sym_qk, Kernel::innerq_scores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_innerq_k3sym_tensorcores_qk, Kernel::innerq_scores_tensor_cores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_innerq_k3sym_cudacores_qk, Kernel::innerq_scores_cuda_cores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_fp16_pv, Kernel::fp16_outputs, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_innerq_v2hybrid_pv, Kernel::innerq_outputs, kServing)->Apply(serving_args);

}  // namespace

int main(int argc, char** argv) {
  if (kvq::gpu::device_count() > 0) {
    kvq::gpu::query_device(0, g_device);
    g_copy_bandwidth = measure_copy_bandwidth();
    benchmark::AddCustomContext("device", g_device.name);
    benchmark::AddCustomContext("copy_bandwidth_GB/s", std::to_string(g_copy_bandwidth / 1e9));
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
