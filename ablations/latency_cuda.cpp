#include "ablations/latency_cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "gpu/attention.h"
#include "gpu/device.h"
#include "gpu/gemv.h"
#include "gpu/pack.h"
#include "gpu/pass.h"
#include "gpu/spec_shape.h"

namespace kvq::ablations {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("kvq bench (cuda): {} failed: {}", what, cudaGetErrorString(e));
}
#define KVQ_BENCH_CHECK(call) check((call), #call)

// Device buffers freed together.
struct Buffers {
  std::vector<void*> all;
  template <typename T>
  T* get(std::size_t count) {
    void* p = nullptr;
    KVQ_BENCH_CHECK(cudaMalloc(&p, std::max<std::size_t>(1, count) * sizeof(T)));
    all.push_back(p);
    return static_cast<T*>(p);
  }
  ~Buffers() {
    for (void* p : all) cudaFree(p);
  }
};

// Seeded values: a pattern of 2^20 normal samples, repeated (timing does not depend on the values).
template <typename T>
void fill(T* dst, std::size_t count, std::uint64_t seed) {
  std::vector<T> host(std::min<std::size_t>(count, std::size_t{1} << 20));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  for (auto& x : host) x = static_cast<T>(normal(rng));
  for (std::size_t at = 0; at < count; at += host.size())
    KVQ_BENCH_CHECK(cudaMemcpy(dst + at, host.data(), std::min(host.size(), count - at) * sizeof(T), cudaMemcpyHostToDevice));
}

// Packs seeded rows into `regions` regions of shape s; returns the bytes a kernel reads.
std::size_t make_regions(Buffers& b, gpu::DeviceRegions& r, const gpu::RegionShape& s, int regions, std::uint64_t seed) {
  const std::size_t meta = s.meta_fp16 ? 2 : 4, count = static_cast<std::size_t>(regions) * s.tokens * s.head_dim;
  r.shape = s;
  r.regions = regions;
  r.codes = b.get<std::uint32_t>(static_cast<std::size_t>(regions) * s.code_words());
  r.scales = b.get<char>(meta * regions * s.groups());
  r.zeros = b.get<char>(meta * regions * s.groups());
  r.zero_offset = b.get<std::uint32_t>(static_cast<std::size_t>(regions));
  r.zero_base = b.get<std::uint32_t>(static_cast<std::size_t>(regions) * s.zero_blocks());
  float* rows = nullptr;
  KVQ_BENCH_CHECK(cudaMalloc(&rows, std::max<std::size_t>(1, count) * sizeof(float)));
  fill(rows, count, seed);
  const cudaError_t e = gpu::pack({rows, r});
  cudaFree(rows);
  KVQ_BENCH_CHECK(e);
  // Zero points actually stored: every group (asym), or one per mode bit set (hybrid: the regions
  // before the last from its zero offset, the last region's counted from its scales' sign bits).
  std::size_t zeros = s.mode == gpu::GroupMode::asym ? static_cast<std::size_t>(regions) * s.groups() : 0;
  if (s.mode == gpu::GroupMode::hybrid && regions > 0 && s.groups() > 0) {
    std::vector<std::uint32_t> offsets(static_cast<std::size_t>(regions));
    KVQ_BENCH_CHECK(cudaMemcpy(offsets.data(), r.zero_offset, offsets.size() * 4, cudaMemcpyDeviceToHost));
    std::vector<unsigned char> last(meta * static_cast<std::size_t>(s.groups()));
    KVQ_BENCH_CHECK(cudaMemcpy(last.data(), static_cast<char*>(r.scales) + meta * (regions - 1) * s.groups(), last.size(), cudaMemcpyDeviceToHost));
    zeros = offsets.back();
    for (std::size_t i = meta - 1; i < last.size(); i += meta) zeros += last[i] >> 7;  // sign bit: the top byte's top bit
  }
  return static_cast<std::size_t>(regions) * (4 * s.code_words() + meta * s.groups() + (s.mode == gpu::GroupMode::hybrid ? 4 * s.zero_blocks() : 0)) +
         meta * zeros;
}

}  // namespace

std::string cuda_unsupported(const CacheSpec& spec, const std::string& kernel) {
  if (spec.k.mode == Mode::fp16 && spec.v.mode == Mode::fp16) return "";
  for (const TensorSpec* t : {&spec.k, &spec.v}) {
    if (t->mode != Mode::sym && t->mode != Mode::asym && t->mode != Mode::hybrid) return "only fp16 and integer quantized caches have CUDA kernels";
    if (t->rotation != Rotation::none || t->token_scale != TokenScale::none) return "rotated or token-scaled caches are not in the latency grid's CUDA path";
  }
  const bool inner = spec.k.group_axis == GroupAxis::channel && spec.v.group_axis == GroupAxis::token;
  const bool outer = spec.k.group_axis == GroupAxis::token && spec.v.group_axis == GroupAxis::channel;
  if (kernel == "attention" && !inner && !outer)
    return "attention takes the inner layouts (channel-axis keys, token-axis values) or the outer ones (token-axis keys, channel-axis values), not a mix";
  if (kernel == "attention" && inner && !gpu::attention_inner_bits(spec.k.bits, spec.v.bits))
    return fmt::format("no fused attention kernel for {}-bit keys with {}-bit values", spec.k.bits, spec.v.bits);
  return "";
}

double cuda_copy_bandwidth(std::string& device_name) {
  if (gpu::device_count() == 0) fail("kvq bench: backend cuda needs a CUDA device; none was found");
  gpu::DeviceInfo info;
  KVQ_BENCH_CHECK(gpu::query_device(0, info));
  device_name = info.name;
  Buffers b;
  const std::size_t n = std::size_t{1} << 30;
  char *a = b.get<char>(n), *c = b.get<char>(n);
  cudaEvent_t start, stop;
  KVQ_BENCH_CHECK(cudaEventCreate(&start));
  KVQ_BENCH_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int i = 0; i < 6; ++i) {
    KVQ_BENCH_CHECK(cudaEventRecord(start));
    KVQ_BENCH_CHECK(cudaMemcpy(c, a, n, cudaMemcpyDeviceToDevice));
    KVQ_BENCH_CHECK(cudaEventRecord(stop));
    KVQ_BENCH_CHECK(cudaEventSynchronize(stop));
    float t = 0;
    KVQ_BENCH_CHECK(cudaEventElapsedTime(&t, start, stop));
    if (i) ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return 2.0 * static_cast<double>(n) / (ms[ms.size() / 2] * 1e-3);
}

CudaTiming time_cuda(const LatencyShape& shape, int N, const CacheSpec& spec, const std::string& kernel, int repeats, std::uint64_t seed) {
  const std::string why = cuda_unsupported(spec, kernel);
  if (!why.empty()) fail("kvq bench (cuda): {} {}: {}", spec.preset, kernel, why);
  gpu::DeviceInfo info;
  KVQ_BENCH_CHECK(gpu::query_device(0, info));
  const int d = shape.head_dim, group = shape.heads / shape.kv_heads, regions = shape.batch * shape.kv_heads;
  const bool fp16 = spec.k.mode == Mode::fp16;
  // Quantized caches: the windows (sink + recent) stay fp16; the quantized part is whole groups of
  // every token-axis tensor.
  const int window = fp16 ? N : std::min(N, spec.sink + spec.recent);
  int whole = 1;
  for (const TensorSpec* t : {&spec.k, &spec.v})
    if (t->group_axis == GroupAxis::token) whole = std::max(whole, t->group_size);  // sizes are powers of two
  const int quantized = fp16 ? 0 : (N - window) / whole * whole;
  const int w = N - quantized;
  Buffers b;
  const std::size_t rows = static_cast<std::size_t>(regions) * group;
  float* q = b.get<float>(rows * d);
  float* probs = b.get<float>(rows * std::max(1, N));
  float* scores = b.get<float>(rows * std::max(1, N));
  float* out = b.get<float>(rows * d);
  fill(q, rows * d, seed + 1);
  {
    std::vector<float> p(rows * std::max(1, N), 1.0f / std::max(1, N));
    KVQ_BENCH_CHECK(cudaMemcpy(probs, p.data(), p.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  const int splits = std::max(gpu::attention_splits(regions, N, info.multiprocessors), gpu::output_splits(regions, N, info.multiprocessors));
  float* scratch = b.get<float>(static_cast<std::size_t>(gpu::attention_scratch_floats(regions, group, d, splits)));
  float* partial = b.get<float>(static_cast<std::size_t>(splits) * rows * d);
  // One cache set: windows in fp16 ([regions][w][d]) and the quantized regions.
  struct Set {
    __half *wk = nullptr, *wv = nullptr;
    gpu::DeviceRegions k, v;
  };
  auto make_set = [&](Set& set, std::uint64_t s) {
    std::size_t bytes = 0;
    set.wk = b.get<__half>(static_cast<std::size_t>(regions) * w * d);
    set.wv = b.get<__half>(static_cast<std::size_t>(regions) * w * d);
    fill(set.wk, static_cast<std::size_t>(regions) * w * d, s);
    fill(set.wv, static_cast<std::size_t>(regions) * w * d, s + 7);
    const std::size_t window_bytes = 2ull * regions * w * d;
    std::size_t kb = window_bytes, vb = window_bytes;
    if (!fp16) {
      kb += make_regions(b, set.k, gpu::region_shape(spec.k, quantized, d), regions, s + 3);
      vb += make_regions(b, set.v, gpu::region_shape(spec.v, quantized, d), regions, s + 5);
    }
    bytes = kernel == "qk" ? kb : kernel == "pv" ? vb : kb + vb;
    return bytes;
  };
  std::vector<Set> sets(1);
  const std::size_t bytes = make_set(sets[0], seed);
  const int copies = static_cast<int>(std::min<std::size_t>(16, std::max<std::size_t>(1, (4 * info.l2_bytes + bytes - 1) / std::max<std::size_t>(1, bytes))));
  sets.resize(static_cast<std::size_t>(copies));
  for (int c = 1; c < copies; ++c) make_set(sets[static_cast<std::size_t>(c)], seed + 100 * c);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int out_splits = gpu::output_splits(regions, std::max(1, w), info.multiprocessors);
  auto call = [&](const Set& s) -> cudaError_t {
    if (kernel == "attention") {
      if (fp16) {
        gpu::Fp16AttentionParams p;
        p.keys = s.wk, p.values = s.wv, p.regions = regions, p.tokens = w, p.head_dim = d, p.group = group;
        p.queries = q, p.scale = scale, p.outputs = out, p.scratch = scratch, p.splits = splits;
        return gpu::attention_fp16(p);
      }
      gpu::AttentionParams p;
      p.keys = s.k, p.values = s.v, p.window_keys = s.wk, p.window_values = s.wv, p.window = w;
      p.queries = q, p.group = group, p.scale = scale, p.outputs = out, p.scratch = scratch, p.splits = splits;
      p.scores_scratch = scores;  // inner GQA groups: the unfused route, measured faster; outer: needed (gpu/attention.h)
      return s.k.shape.channel_axis ? gpu::attention_inner(p) : gpu::attention_outer(p);
    }
    // The separate products: the quantized part, then the fp16 window (both launched each call).
    if (kernel == "qk") {
      if (quantized > 0) {
        const gpu::ScoresParams p{s.k, q, group, scores};
        const cudaError_t e = s.k.shape.channel_axis ? gpu::scores_inner(p) : gpu::scores_outer(p);
        if (e != cudaSuccess) return e;
      }
      return w > 0 ? gpu::scores_fp16({s.wk, regions, w, d, group, q, scores}) : cudaSuccess;
    }
    if (quantized > 0) {
      gpu::OutputsParams p;
      p.values = s.v, p.probs = probs, p.group = group, p.outputs = out, p.partial = partial, p.splits = splits;
      const cudaError_t e = s.v.shape.channel_axis ? gpu::outputs_outer(p) : gpu::outputs_inner(p);
      if (e != cudaSuccess) return e;
    }
    return w > 0 ? gpu::outputs_fp16({s.wv, regions, w, d, group, probs, out, partial, out_splits}) : cudaSuccess;
  };
  for (const auto& s : sets) KVQ_BENCH_CHECK(call(s));  // warm-up
  KVQ_BENCH_CHECK(cudaDeviceSynchronize());
  // Each repeat is one pass of gpu::kCallsPerPass calls over the sets taken in turn, per call, timed as
  // bench_gpu times its kernels (gpu/pass.h).
  gpu::Pass pass;
  int c = 0;
  std::vector<double> times;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    cudaError_t e = cudaSuccess;
    const float ms = pass.run([&](int k) { return call(sets[static_cast<std::size_t>(k)]); }, c, copies, e);
    KVQ_BENCH_CHECK(e);
    times.push_back(1e3 * ms / gpu::kCallsPerPass);
  }
  std::sort(times.begin(), times.end());
  return {times[times.size() / 2], bytes};
}

}  // namespace kvq::ablations
