// GPU GEMVs and decode attention, paper shape (batch 1 x 32 heads, head_dim 128) and serving shape
// (batch 16, 32 query heads on 8 kv heads): fp16 baselines (ours and cuBLAS), InnerQ keys (3-bit
// sym, channel groups) for q.K^T, InnerQ values (2-bit hybrid, token groups) for p.V, each on the
// tensor-core and CUDA-core kernels, the outer layouts (KIVI: 2-bit asym per-channel keys and per-token
// values), the fused attention paths, and attention over two gpu::TensorCache (quantized_attention).
// CUDA events around passes of calls, warm-up, median of repetitions (--benchmark_repetitions), input buffers rotated over at least
// 4x the L2; counters: us, GB/s of cache read, % of the device-to-device copy bandwidth
// measured at start-up, and % of the read floor: the time a plain read of the same bytes takes,
// timed the same way in the same run (a small read pays the launch and ramp that a large copy
// hides). Run: build/bench/bench_gpu --benchmark_repetitions=5; --dependent_launch=0 times plain
// launches instead of kvq's programmatic dependent launches (the read floor's kernel too);
// --max_splits=S caps the sequence splits of the GEMV and attention benchmarks at S (the library's
// own counts otherwise; the cache attention keeps its cache's), for split-count sweeps.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/spec.h"
#include "gpu/attention.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/device.h"
#include "gpu/gemv.h"
#include "gpu/pack.h"
#include "gpu/pass.h"
#include "gpu/quantized_attention.h"
#include "gpu/rotate.h"
#include "gpu/tensor_cache.h"

namespace {

#define BENCH_CUDA(call)                                                   \
  do {                                                                     \
    const cudaError_t e = (call);                                          \
    if (e != cudaSuccess) {                                                \
      state.SkipWithError(cudaGetErrorString(e));                          \
      return;                                                              \
    }                                                                      \
  } while (0)

#define KVQ_BENCH_TRY(call)              \
  do {                                   \
    const cudaError_t e_ = (call);       \
    if (e_ != cudaSuccess) return e_;    \
  } while (0)

double g_copy_bandwidth = 0;  // bytes/s, read + write of a device-to-device copy
kvq::gpu::DeviceInfo g_device;
int g_max_splits = 0;  // --max_splits; 0: no cap

// A benchmark's sequence splits: the library's count, capped by --max_splits.
int capped_splits(int splits) { return g_max_splits > 0 ? std::min(splits, g_max_splits) : splits; }

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

// The read floor's kernel: every 16-byte piece of [pieces] once, four loads in flight per thread,
// folded into one word that is stored only if it matches an unlikely value (so the loads stay).
__global__ void read_pieces(const uint4* __restrict__ in, long long pieces, unsigned* sink) {
  kvq::gpu::wait_for_prior_kernels();
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  unsigned x = 0;
  for (; i + 3 * stride < pieces; i += 4 * stride) {
    const uint4 a = __ldg(in + i), b = __ldg(in + i + stride), c = __ldg(in + i + 2 * stride), d = __ldg(in + i + 3 * stride);
    x ^= a.x ^ a.w ^ b.y ^ c.z ^ d.w;
  }
  for (; i < pieces; i += stride) x ^= __ldg(in + i).x;
  if (x == 0x9e3779b9u) *sink = x;
}

using kvq::gpu::kCallsPerPass;
using kvq::gpu::Pass;  // time_calls and the read floor both time through it, so they time alike

// Seconds per call of a plain read of `bytes` (rounded down to 16), timed as time_calls times a
// kernel: passes of 20 calls over copies rotated through 4x the L2, the median of 15 passes. Measured
// once per size; 0 where it could not be.
double read_floor_seconds(double bytes) {
  static std::map<long long, double> cache;
  const long long pieces = static_cast<long long>(bytes) / 16;
  if (pieces < 1) return 0;
  const auto it = cache.find(pieces);
  if (it != cache.end()) return it->second;
  const int copies = static_cast<int>(std::max<long long>(1, (4 * static_cast<long long>(g_device.l2_bytes) + 16 * pieces - 1) / (16 * pieces)));
  uint4* data = nullptr;
  unsigned* sink = nullptr;
  double seconds = 0;
  if (cudaMalloc(&data, static_cast<std::size_t>(copies) * pieces * 16) == cudaSuccess && cudaMalloc(&sink, 4) == cudaSuccess &&
      cudaMemset(data, 1, static_cast<std::size_t>(copies) * pieces * 16) == cudaSuccess) {
    const int blocks = 4 * std::max(1, g_device.multiprocessors);  // 512 threads: 2048 per SM (a flat optimum, measured 2026-11-24)
    auto launch = [&](int c) {
      return kvq::gpu::launch_kernel(read_pieces, dim3(blocks), dim3(512), 0, nullptr, data + static_cast<long long>(c) * pieces, pieces, sink);
    };
    Pass pass;
    std::vector<float> ms;
    int c = 0;
    cudaError_t e = cudaSuccess;
    for (int i = 0; i < 16 && e == cudaSuccess; ++i) {
      const float t = pass.run(launch, c, copies, e);
      if (i > 0) ms.push_back(t);  // the first pass warms up
    }
    std::sort(ms.begin(), ms.end());
    if (e == cudaSuccess) seconds = ms[ms.size() / 2] * 1e-3 / kCallsPerPass;
  }
  cudaFree(data);
  cudaFree(sink);
  cudaGetLastError();  // a failed allocation here must not fail the next launcher's error check
  cache[pieces] = seconds;
  return seconds;
}

// CUDA events around a pass of 20 calls (gpu/pass.h, as kvq bench times them), so the host's launch
// latency overlaps the previous call instead of being counted. Copies are taken in turn
// across passes, so a copy comes back only after 4x the L2 of other data. Sets the manual time per call
// (kMinTime of it per run), the GB/s and roofline_% counters from the bytes one call moves, and
// read_floor_% (100 x the read floor's time over this kernel's).
constexpr double kMinTime = 0.025;  // seconds of per-call time: ~0.5 s of passes
template <typename Launch>
void time_calls(benchmark::State& state, Launch launch, int copies, double bytes) {
  Pass pass;
  int c = 0;
  for (auto _ : state) {
    cudaError_t e = cudaSuccess;
    const float ms = pass.run(launch, c, copies, e);
    if (e != cudaSuccess) {
      state.SkipWithError(cudaGetErrorString(e));
      break;
    }
    state.SetIterationTime(ms * 1e-3 / kCallsPerPass);
  }
  // Time (the benchmark's own column) is µs per call; GB/s and the two percentages are per-call rates
  // from the manual times. Every timed benchmark sets these four counters and no other: Google
  // Benchmark's CSV reporter takes its columns from the first benchmark and aborts on a counter it has
  // not seen. Shape facts go in the label.
  state.counters["MB"] = bytes / 1e6;
  state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["roofline_%"] = benchmark::Counter(100.0 * bytes / g_copy_bandwidth, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["read_floor_%"] = benchmark::Counter(100.0 * read_floor_seconds(bytes), benchmark::Counter::kIsIterationInvariantRate);
}

// *_cuda_cores, *_tensor_cores: the same product on each kernel, for the ratio; innerq_scores_scaled:
// the rotation family's scores, with a token scale per key (q rotated beforehand).
// kivi_*: the outer layouts (2-bit asym, groups of 32: per-channel keys, per-token values), on tensor
// cores by default; kivi_scores_cuda_cores and kivi_outputs_cuda_cores on the CUDA-core kernels.
enum class Kernel { fp16_scores, fp16_outputs, innerq_scores, innerq_outputs, innerq_scores_scaled, innerq_scores_tensor_cores, innerq_scores_cuda_cores,
                    innerq_outputs_cuda_cores, kivi_scores, kivi_scores_cuda_cores, kivi_outputs, kivi_outputs_cuda_cores };

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
  const bool kivi_keys = kernel == Kernel::kivi_scores || kernel == Kernel::kivi_scores_cuda_cores;
  const bool outer = kivi_keys || kernel == Kernel::kivi_outputs || kernel == Kernel::kivi_outputs_cuda_cores;
  const bool keys = kernel == Kernel::innerq_scores || kernel == Kernel::fp16_scores || kivi_keys || scaled || forced;
  const bool quantized = kernel == Kernel::innerq_scores || kernel == Kernel::innerq_outputs || kernel == Kernel::innerq_outputs_cuda_cores || scaled ||
                         forced || outer;
  kvq::gpu::RegionShape s;
  s.tokens = n;
  s.head_dim = d;
  s.group_size = 32;
  s.channel_axis = keys != outer;
  s.bits = keys && !outer ? 3 : 2;
  s.mode = outer ? kvq::gpu::GroupMode::asym : keys ? kvq::gpu::GroupMode::sym : kvq::gpu::GroupMode::hybrid;
  s.hybrid_asym_bits = 1;
  const std::size_t fp16_bytes = static_cast<std::size_t>(regions) * n * d * 2;
  // Zero points: every group (asym); hybrid values: about a quarter of the groups (random data).
  const std::size_t zero_bytes = outer ? s.groups() * 2 : keys ? 0 : s.groups() * 2 / 4 + s.zero_blocks() * 4;
  const std::size_t bytes = quantized ? regions * (s.code_words() * 4 + s.groups() * 2 + zero_bytes + (scaled ? static_cast<std::size_t>(n) * 4 : 0))
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
  const int splits = capped_splits(kvq::gpu::output_splits(regions, n, g_device.multiprocessors));
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
    if (kivi_keys) {
      return kvq::gpu::scores_outer({packed[c], vectors, group, out, nullptr,
                                     kernel == Kernel::kivi_scores ? kvq::gpu::GemvKernel::automatic : kvq::gpu::GemvKernel::cuda_cores});
    }
    if (scaled) return kvq::gpu::scores_inner({packed[c], vectors, group, out, token_scale});
    if (forced) {
      return kvq::gpu::scores_inner({packed[c], vectors, group, out, nullptr,
                                     kernel == Kernel::innerq_scores_cuda_cores ? kvq::gpu::GemvKernel::cuda_cores
                                                                                : kvq::gpu::GemvKernel::tensor_cores});
    }
    if (kernel == Kernel::innerq_outputs || kernel == Kernel::innerq_outputs_cuda_cores || kernel == Kernel::kivi_outputs ||
        kernel == Kernel::kivi_outputs_cuda_cores) {
      kvq::gpu::OutputsParams p;
      if (kernel == Kernel::innerq_outputs_cuda_cores || kernel == Kernel::kivi_outputs_cuda_cores) p.kernel = kvq::gpu::GemvKernel::cuda_cores;
      p.values = packed[c];
      p.probs = vectors;
      p.group = group;
      p.outputs = out;
      p.partial = partial;
      p.splits = splits;
      return outer ? kvq::gpu::outputs_outer(p) : kvq::gpu::outputs_inner(p);
    }
    kvq::gpu::Fp16Params p{halves[c], regions, n, d, group, vectors, out, partial, splits};
    return kernel == Kernel::fp16_scores ? kvq::gpu::scores_fp16(p) : kvq::gpu::outputs_fp16(p);
  };
  for (int c = 0; c < copies; ++c) BENCH_CUDA(launch(c));  // warm-up
  BENCH_CUDA(cudaDeviceSynchronize());
  time_calls(state, launch, copies, static_cast<double>(bytes));
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

// cuBLAS fp16 GEMVs as batched GEMMs (one per kv head, the GQA group as the GEMM's n), fp32 output:
// scores [regions][group][n] = Q K^T, outputs [regions][group][d] = P V with P in fp16.
cublasStatus_t cublas_qk(cublasHandle_t h, const __half* keys, const __half* q, float* scores, int regions, int n, int d, int group) {
  const float one = 1.0f, zero = 0.0f;
  return cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, group, d, &one, keys, CUDA_R_16F, d, static_cast<long long>(n) * d, q, CUDA_R_16F, d,
                                    static_cast<long long>(group) * d, &zero, scores, CUDA_R_32F, n, static_cast<long long>(group) * n, regions,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
cublasStatus_t cublas_pv(cublasHandle_t h, const __half* values, const __half* p, float* out, int regions, int n, int d, int group) {
  const float one = 1.0f, zero = 0.0f;
  return cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, d, group, n, &one, values, CUDA_R_16F, d, static_cast<long long>(n) * d, p, CUDA_R_16F, n,
                                    static_cast<long long>(group) * n, &zero, out, CUDA_R_32F, d, static_cast<long long>(group) * d, regions,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
cudaError_t cublas_error(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorUnknown; }

// Dense fp16 caches [regions][n][d], `copies` of them rotated over 4x the L2.
struct Fp16Caches {
  std::vector<__half*> keys, values;
  ~Fp16Caches() {
    for (auto* p : keys) cudaFree(p);
    for (auto* p : values) cudaFree(p);
  }
};
// Fills dst[count] with a seeded normal pattern of 2^20 values, repeated (timing does not depend on the
// values, and generating billions of samples on the host would dominate the run).
template <typename T>
cudaError_t fill_pattern(T* dst, std::size_t count, std::uint64_t seed) {
  static std::vector<float> pattern;
  if (pattern.empty()) {
    pattern.resize(std::size_t{1} << 20);
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    for (auto& x : pattern) x = normal(rng);
  }
  std::vector<T> host(std::min(count, pattern.size()));
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = static_cast<T>(pattern[i]);
  for (std::size_t at = 0; at < count; at += host.size())
    KVQ_BENCH_TRY(cudaMemcpy(dst + at, host.data(), std::min(host.size(), count - at) * sizeof(T), cudaMemcpyHostToDevice));
  return cudaSuccess;
}

cudaError_t make_fp16(Fp16Caches& c, int copies, std::size_t count) {
  for (int i = 0; i < copies; ++i) {
    c.keys.push_back(nullptr), c.values.push_back(nullptr);
    KVQ_BENCH_TRY(cudaMalloc(&c.keys.back(), std::max<std::size_t>(1, count) * sizeof(__half)));
    KVQ_BENCH_TRY(cudaMalloc(&c.values.back(), std::max<std::size_t>(1, count) * sizeof(__half)));
    KVQ_BENCH_TRY(fill_pattern(c.keys.back(), count, 11));
    KVQ_BENCH_TRY(fill_pattern(c.values.back(), count, 11));
  }
  return cudaSuccess;
}

void cublas_gemv(benchmark::State& state, bool keys, Shape shape) {
  const int n = static_cast<int>(state.range(0)), d = 128, regions = shape.regions, group = shape.group;
  if (kvq::gpu::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const std::size_t count = static_cast<std::size_t>(regions) * n * d, bytes = count * 2;
  const int copies = static_cast<int>(std::max<std::size_t>(1, (4 * g_device.l2_bytes + bytes - 1) / bytes));
  Fp16Caches caches;
  BENCH_CUDA(make_fp16(caches, copies, count));
  __half* vec = nullptr;
  float* out = nullptr;
  BENCH_CUDA(cudaMalloc(&vec, static_cast<std::size_t>(regions) * group * std::max(n, d) * sizeof(__half)));
  BENCH_CUDA(cudaMemset(vec, 0, static_cast<std::size_t>(regions) * group * std::max(n, d) * sizeof(__half)));
  BENCH_CUDA(cudaMalloc(&out, static_cast<std::size_t>(regions) * group * std::max(n, d) * sizeof(float)));
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
    state.SkipWithError("cublasCreate failed");
    return;
  }
  auto launch = [&](int c) {
    return cublas_error(keys ? cublas_qk(handle, caches.keys[c], vec, out, regions, n, d, group) : cublas_pv(handle, caches.values[c], vec, out, regions, n, d, group));
  };
  for (int c = 0; c < copies; ++c) BENCH_CUDA(launch(c));
  BENCH_CUDA(cudaDeviceSynchronize());
  time_calls(state, launch, copies, static_cast<double>(bytes));
  cublasDestroy(handle);
  cudaFree(vec);
  cudaFree(out);
}

// One decode attention step (scores, softmax, outputs) for every query head:
//   innerq:         gpu::attention_inner over InnerQ's cache (K 3-bit sym channel groups, V 2-bit hybrid
//                   token groups, group 32) with a 128-token fp16 window (sink 32 + recent 96), as a caller
//                   runs it: given scores_scratch, so GQA groups, and one head from
//                   kUnfusedOneHeadTokens quantized tokens, take the unfused route (AttentionRoute);
//   innerq_fused:   the same without scores_scratch: the fused kernel for every group;
//   kivi:           gpu::attention_outer over KIVI's cache (K and V 2-bit asym, groups of 32: per-channel
//                   keys, per-token values) with the same window: the outer GEMVs, with one read of
//                   the scores for each row's softmax max and sum between them;
//   fp16_fused:     gpu::attention_fp16;
//   fp16_unfused:   our fp16 GEMVs with softmax_rows between them;
//   cublas_unfused: cuBLAS GEMM q.K^T, softmax_rows to fp16, cuBLAS GEMM p.V.
enum class Path { innerq, innerq_fused, kivi, fp16_fused, fp16_unfused, cublas_unfused };

// Bytes a call reads of `regions` regions of shape s (fp16 metadata): codes, scales, and zero points:
// every group's (asym), about a quarter of them (hybrid's estimate).
double region_bytes(const kvq::gpu::RegionShape& s, int regions) {
  const double zeros = s.mode == kvq::gpu::GroupMode::asym ? s.groups() * 2.0 : s.mode == kvq::gpu::GroupMode::hybrid ? s.groups() * 2 / 4 + s.zero_blocks() * 4 : 0;
  return static_cast<double>(regions) * (s.code_words() * 4 + s.groups() * 2 + zeros);
}

void attention(benchmark::State& state, Path path, Shape shape) {
  const int n = static_cast<int>(state.range(0)), d = 128, regions = shape.regions, group = shape.group, window = 128;
  if (kvq::gpu::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int splits = capped_splits(kvq::gpu::attention_splits(regions, n, g_device.multiprocessors));
  float *q, *scores, *probs, *out, *scratch, *partial;
  __half *q_half, *p_half;
  const std::size_t rows = static_cast<std::size_t>(regions) * group;
  BENCH_CUDA(cudaMalloc(&q, rows * d * sizeof(float)));
  BENCH_CUDA(cudaMalloc(&q_half, rows * d * sizeof(__half)));
  BENCH_CUDA(cudaMalloc(&scores, rows * n * sizeof(float)));
  BENCH_CUDA(cudaMalloc(&probs, rows * n * sizeof(float)));
  BENCH_CUDA(cudaMalloc(&p_half, rows * n * sizeof(__half)));
  BENCH_CUDA(cudaMalloc(&out, rows * d * sizeof(float)));
  BENCH_CUDA(cudaMalloc(&scratch, kvq::gpu::attention_scratch_floats(regions, group, d, splits) * sizeof(float)));
  BENCH_CUDA(cudaMalloc(&partial, static_cast<std::size_t>(splits) * rows * d * sizeof(float)));
  {
    std::vector<float> host(rows * d);
    std::vector<__half> host_half(rows * d);
    std::mt19937_64 rng(5);
    std::normal_distribution<float> normal;
    for (std::size_t i = 0; i < host.size(); ++i) host_half[i] = __float2half(host[i] = normal(rng));
    BENCH_CUDA(cudaMemcpy(q, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(q_half, host_half.data(), host_half.size() * sizeof(__half), cudaMemcpyHostToDevice));
  }
  double bytes = 0;
  int copies = 1;
  Fp16Caches dense, windows;
  std::vector<kvq::gpu::DeviceRegions> keys, values;
  cublasHandle_t handle = nullptr;
  const bool kivi = path == Path::kivi, quantized = path == Path::innerq || path == Path::innerq_fused || kivi;
  if (quantized) {
    kvq::gpu::RegionShape ks, vs;
    ks.tokens = vs.tokens = std::max(0, (n - window) / 32 * 32);
    ks.head_dim = vs.head_dim = d;
    if (kivi) {
      ks.bits = vs.bits = 2, ks.mode = vs.mode = kvq::gpu::GroupMode::asym, ks.channel_axis = false, vs.channel_axis = true;
    } else {
      ks.bits = 3, ks.mode = kvq::gpu::GroupMode::sym, ks.channel_axis = true;
      vs.bits = 2, vs.mode = kvq::gpu::GroupMode::hybrid, vs.channel_axis = false;
    }
    const int w = n - ks.tokens;
    bytes = region_bytes(ks, regions) + region_bytes(vs, regions) + 2.0 * regions * w * d * 2;
    copies = static_cast<int>(std::max<double>(1, std::ceil(4 * g_device.l2_bytes / bytes)));
    const std::size_t count = static_cast<std::size_t>(regions) * ks.tokens * d;
    float* rows_dev = nullptr;
    BENCH_CUDA(cudaMalloc(&rows_dev, std::max<std::size_t>(1, count) * sizeof(float)));
    BENCH_CUDA(fill_pattern(rows_dev, count, 9));
    for (int c = 0; c < copies; ++c)
      for (auto [list, s] : {std::pair{&keys, ks}, std::pair{&values, vs}}) {
        kvq::gpu::DeviceRegions r;
        r.shape = s;
        r.regions = regions;
        BENCH_CUDA(cudaMalloc(&r.codes, 4 * regions * std::max(1LL, s.code_words())));
        BENCH_CUDA(cudaMalloc(&r.scales, 2 * regions * std::max(1LL, s.groups())));
        BENCH_CUDA(cudaMalloc(&r.zeros, 2 * regions * std::max(1LL, s.groups())));
        BENCH_CUDA(cudaMalloc(&r.zero_offset, 4 * regions));
        BENCH_CUDA(cudaMalloc(&r.zero_base, 4 * regions * std::max(1LL, s.zero_blocks())));
        BENCH_CUDA(kvq::gpu::pack({rows_dev, r}));
        list->push_back(r);
      }
    cudaFree(rows_dev);
    BENCH_CUDA(make_fp16(windows, copies, static_cast<std::size_t>(regions) * w * d));
    state.SetLabel("window " + std::to_string(w));
  } else {
    const std::size_t count = static_cast<std::size_t>(regions) * n * d;
    bytes = 2.0 * count * 2;
    copies = static_cast<int>(std::max<double>(1, std::ceil(4 * g_device.l2_bytes / bytes)));
    BENCH_CUDA(make_fp16(dense, copies, count));
    if (path == Path::cublas_unfused && cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
      state.SkipWithError("cublasCreate failed");
      return;
    }
  }
  auto launch = [&](int c) -> cudaError_t {
    switch (path) {
      case Path::innerq:
      case Path::innerq_fused:
      case Path::kivi: {
        kvq::gpu::AttentionParams p;
        p.keys = keys[c], p.values = values[c];
        p.window_keys = windows.keys[c], p.window_values = windows.values[c], p.window = n - keys[c].shape.tokens;
        p.queries = q, p.group = group, p.scale = scale, p.outputs = out, p.scratch = scratch, p.splits = splits;
        p.scores_scratch = path == Path::innerq_fused ? nullptr : scores;
        return kivi ? kvq::gpu::attention_outer(p) : kvq::gpu::attention_inner(p);
      }
      case Path::fp16_fused: {
        kvq::gpu::Fp16AttentionParams p;
        p.keys = dense.keys[c], p.values = dense.values[c], p.regions = regions, p.tokens = n, p.head_dim = d, p.group = group;
        p.queries = q, p.scale = scale, p.outputs = out, p.scratch = scratch, p.splits = splits;
        return kvq::gpu::attention_fp16(p);
      }
      case Path::fp16_unfused: {
        const int out_splits = kvq::gpu::output_splits(regions, n, g_device.multiprocessors);
        KVQ_BENCH_TRY(kvq::gpu::scores_fp16({dense.keys[c], regions, n, d, group, q, scores}));
        KVQ_BENCH_TRY(kvq::gpu::softmax_rows(scores, regions * group, n, scale, probs, nullptr));
        return kvq::gpu::outputs_fp16({dense.values[c], regions, n, d, group, probs, out, partial, std::min(out_splits, splits)});
      }
      case Path::cublas_unfused:
        KVQ_BENCH_TRY(cublas_error(cublas_qk(handle, dense.keys[c], q_half, scores, regions, n, d, group)));
        KVQ_BENCH_TRY(kvq::gpu::softmax_rows(scores, regions * group, n, scale, nullptr, p_half));
        return cublas_error(cublas_pv(handle, dense.values[c], p_half, out, regions, n, d, group));
    }
    return cudaErrorInvalidValue;
  };
  for (int c = 0; c < copies; ++c) BENCH_CUDA(launch(c));
  BENCH_CUDA(cudaDeviceSynchronize());
  time_calls(state, launch, copies, bytes);
  if (handle) cublasDestroy(handle);
  for (auto& r : keys) cudaFree(r.codes), cudaFree(r.scales), cudaFree(r.zeros), cudaFree(r.zero_offset), cudaFree(r.zero_base);
  for (auto& r : values) cudaFree(r.codes), cudaFree(r.scales), cudaFree(r.zeros), cudaFree(r.zero_offset), cudaFree(r.zero_base);
  for (void* p : {static_cast<void*>(q), static_cast<void*>(q_half), static_cast<void*>(scores), static_cast<void*>(probs), static_cast<void*>(p_half),
                  static_cast<void*>(out), static_cast<void*>(scratch), static_cast<void*>(partial)})
    cudaFree(p);
}

// gpu::quantized_attention over a key and a value gpu::TensorCache of InnerQ's hybrid preset (sink 32,
// recent 96; keys flushed one token at a time, values 32 at a time), prefilled with n tokens and then
// appended 17: 17 quantized keys whose values are still fp16 (n + 17 tokens in all). Times the whole call
// (the query's fold, the windows' assembly, attention_inner), to set beside innerq_attention over packed
// regions with ready windows.
void cache_attention(benchmark::State& state, Shape shape) {
  const int n = static_cast<int>(state.range(0)), d = 128, regions = shape.regions, group = shape.group, appended = 17;
  if (kvq::gpu::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const kvq::CacheSpec cs = kvq::preset("innerq_hybrid");
  std::vector<std::unique_ptr<kvq::gpu::TensorCache>> keys, values;
  auto make = [&](bool key) { return std::make_unique<kvq::gpu::TensorCache>(key ? cs.k : cs.v, regions, d, cs.sink, cs.recent, key && cs.key_norm, n + appended); };
  keys.push_back(make(true)), values.push_back(make(false));
  BENCH_CUDA(keys[0]->status());
  BENCH_CUDA(values[0]->status());
  const std::size_t rows = static_cast<std::size_t>(regions) * group;
  float *input, *q, *out;
  const std::size_t count = static_cast<std::size_t>(regions) * n * d;
  BENCH_CUDA(cudaMalloc(&input, count * sizeof(float)));
  BENCH_CUDA(cudaMalloc(&q, rows * d * sizeof(float)));
  BENCH_CUDA(cudaMalloc(&out, rows * d * sizeof(float)));
  BENCH_CUDA(fill_pattern(input, count, 9));
  BENCH_CUDA(fill_pattern(q, rows * d, 5));
  double bytes = 0;
  int copies = 1;
  for (int c = 0; c < copies; ++c) {
    if (c > 0) keys.push_back(make(true)), values.push_back(make(false));
    for (auto* cache : {keys[c].get(), values[c].get()}) {
      BENCH_CUDA(cache->status());
      BENCH_CUDA(cache->prefill(input, n));
      for (int i = 0; i < appended; ++i) BENCH_CUDA(cache->append(input + static_cast<std::size_t>(i) * d));
    }
    if (c == 0) {
      const int window = n + appended - std::min(keys[0]->quantized_tokens(), values[0]->quantized_tokens());  // the windows' rows
      bytes = region_bytes(keys[0]->region().shape, regions) + region_bytes(values[0]->region().shape, regions) + 2.0 * regions * window * d * 2;
      copies = static_cast<int>(std::max<double>(1, std::ceil(4 * g_device.l2_bytes / bytes)));
      state.SetLabel("window " + std::to_string(window) + ", quantized keys " + std::to_string(keys[0]->quantized_tokens()) +
                     ", values " + std::to_string(values[0]->quantized_tokens()));
    }
  }
  cudaFree(input);
  void* workspace = nullptr;
  BENCH_CUDA(cudaMalloc(&workspace, kvq::gpu::quantized_attention_workspace(*keys[0], *values[0], group)));
  auto launch = [&](int c) {
    kvq::gpu::CacheAttentionParams p;
    p.queries = q, p.group = group, p.scale = 1.0f / std::sqrt(static_cast<float>(d)), p.outputs = out, p.workspace = workspace;
    return kvq::gpu::quantized_attention(*keys[c], *values[c], p);
  };
  for (int c = 0; c < copies; ++c) BENCH_CUDA(launch(c));
  BENCH_CUDA(cudaDeviceSynchronize());
  time_calls(state, launch, copies, bytes);
  for (void* p : {static_cast<void*>(q), static_cast<void*>(out), workspace}) cudaFree(p);
}

const Shape kPaper{32, 1};
const Shape kServing{16 * 8, 4};

void paper_args(benchmark::internal::Benchmark* b) {
  for (int n = 512; n <= 32768; n *= 2) b->Arg(n);
  b->UseManualTime()->MinTime(kMinTime)->Unit(benchmark::kMicrosecond);
}
void serving_args(benchmark::internal::Benchmark* b) {
  for (int n = 4096; n <= 32768; n *= 2) b->Arg(n);
  b->UseManualTime()->MinTime(kMinTime)->Unit(benchmark::kMicrosecond);
}

BENCHMARK_CAPTURE(run, paper_fp16_qk, Kernel::fp16_scores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_innerq_k3sym_qk, Kernel::innerq_scores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_innerq_k3sym_tensorcores_qk, Kernel::innerq_scores_tensor_cores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_innerq_k3sym_cudacores_qk, Kernel::innerq_scores_cuda_cores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_fp16_pv, Kernel::fp16_outputs, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_innerq_v2hybrid_pv, Kernel::innerq_outputs, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_innerq_v2hybrid_cudacores_pv, Kernel::innerq_outputs_cuda_cores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_kivi_k2asym_qk, Kernel::kivi_scores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_kivi_k2asym_cudacores_qk, Kernel::kivi_scores_cuda_cores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_kivi_v2asym_pv, Kernel::kivi_outputs, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_kivi_v2asym_cudacores_pv, Kernel::kivi_outputs_cuda_cores, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(run, paper_rotated_k3sym_scaled_qk, Kernel::innerq_scores_scaled, kPaper)->Apply(paper_args);
BENCHMARK(rotate_keys)->Arg(4096)->Arg(32768)->UseManualTime()->MinTime(kMinTime)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(run, serving_fp16_qk, Kernel::fp16_scores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_innerq_k3sym_qk, Kernel::innerq_scores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_innerq_k3sym_tensorcores_qk, Kernel::innerq_scores_tensor_cores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_innerq_k3sym_cudacores_qk, Kernel::innerq_scores_cuda_cores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_fp16_pv, Kernel::fp16_outputs, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_innerq_v2hybrid_pv, Kernel::innerq_outputs, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_innerq_v2hybrid_cudacores_pv, Kernel::innerq_outputs_cuda_cores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_kivi_k2asym_qk, Kernel::kivi_scores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_kivi_k2asym_cudacores_qk, Kernel::kivi_scores_cuda_cores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_kivi_v2asym_pv, Kernel::kivi_outputs, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(run, serving_kivi_v2asym_cudacores_pv, Kernel::kivi_outputs_cuda_cores, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(cublas_gemv, paper_cublas_qk, true, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(cublas_gemv, paper_cublas_pv, false, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(cublas_gemv, serving_cublas_qk, true, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(cublas_gemv, serving_cublas_pv, false, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(attention, paper_innerq_attention, Path::innerq, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(attention, paper_innerq_fused_attention, Path::innerq_fused, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(cache_attention, paper_innerq_cache_attention, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(attention, paper_kivi_attention, Path::kivi, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(attention, paper_fp16_fused_attention, Path::fp16_fused, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(attention, paper_fp16_unfused_attention, Path::fp16_unfused, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(attention, paper_cublas_attention, Path::cublas_unfused, kPaper)->Apply(paper_args);
BENCHMARK_CAPTURE(attention, serving_innerq_attention, Path::innerq, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(attention, serving_innerq_fused_attention, Path::innerq_fused, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(cache_attention, serving_innerq_cache_attention, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(attention, serving_kivi_attention, Path::kivi, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(attention, serving_fp16_fused_attention, Path::fp16_fused, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(attention, serving_fp16_unfused_attention, Path::fp16_unfused, kServing)->Apply(serving_args);
BENCHMARK_CAPTURE(attention, serving_cublas_attention, Path::cublas_unfused, kServing)->Apply(serving_args);

}  // namespace

int main(int argc, char** argv) {
  // --dependent_launch=0 times plain launches (gpu/dependent_launch.cuh); kvq's default is 1.
  // --max_splits=S (S >= 1) caps the benchmarks' sequence splits.
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i], launch_flag = "--dependent_launch=", splits_flag = "--max_splits=";
    if (arg.rfind(launch_flag, 0) == 0) {
      const std::string value = arg.substr(launch_flag.size());
      if (value != "0" && value != "1") {
        std::fprintf(stderr, "bench_gpu: --dependent_launch expects 0 or 1, got '%s'\n", value.c_str());
        return 2;
      }
      kvq::gpu::set_dependent_launch(value == "1");
    } else if (arg.rfind(splits_flag, 0) == 0) {
      const std::string value = arg.substr(splits_flag.size());
      char* end = nullptr;
      const long s = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || s < 1 || s > 4096) {
        std::fprintf(stderr, "bench_gpu: --max_splits expects an integer from 1 to 4096, got '%s'\n", value.c_str());
        return 2;
      }
      g_max_splits = static_cast<int>(s);
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  benchmark::AddCustomContext("dependent_launch", kvq::gpu::dependent_launch() ? "1" : "0");
  if (g_max_splits > 0) benchmark::AddCustomContext("max_splits", std::to_string(g_max_splits));
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
