// p . V^ over token-axis values on int8 tensor cores (gpu/byte_planes.cuh). Each warp streams its
// own 128-token stretches, copied into shared memory ahead (gpu/value_tiles.cuh's stages),
// with no barrier per stretch. One query head per kv head (outputs_warp_kernel): lane-owned tiles
// (gpu/value_tiles.cuh). GQA groups (outputs_heads_kernel): tiles shared by a quad, the heads in B's
// columns (gpu/head_tiles.cuh). Outputs stay in registers; runs are summed in order. The GQA kernel
// also serves as the values half of the GQA attention (outputs_softmax_mma): it takes raw scores and
// runs an online softmax over them, writing attention parts instead of partial sums.

#include <cstddef>
#include <cstdint>

#include "core/packed.h"
#include "gpu/attention_parts.h"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/fp16_part.cuh"
#include "gpu/head_tiles.cuh"
#include "gpu/launch.h"
#include "gpu/meta.cuh"
#include "gpu/outputs_mma.h"
#include "gpu/reduce.cuh"
#include "gpu/value_tiles.cuh"

namespace kvq::gpu {

namespace {

constexpr int kThreads = 128;
constexpr int kStretch = value_tiles::kStretch;  // tokens per block iteration: 4 tiles of 32, one per lane of a quad

// Softmax (outputs_softmax_mma): p.probs holds raw scores q . k^, and each split writes an attention
// part (gpu/attention_parts.h) rather than partial sums.
struct SoftmaxParts {
  float scale = 1.0f;  // the softmax scale, applied to the scores
  attention_detail::Parts parts{};
  SoftmaxWindows windows{};  // one head: shared out among the splits' blocks (one_head_part)
};

// GQA groups: as one head, with the quad sharing each tile and the heads in B's columns
// (gpu/head_tiles.cuh). A stretch's probabilities for every head are loaded a stretch ahead; at the
// end the block's warps add up through the stages' shared memory. Softmax: the stretch's scores
// become e^(scale s - m) against each head's running max m (the warp's), which rescales the lane's
// accumulators and running sums as it grows, as the fused one-head kernel does
// (gpu/attention_lane.cuh); at the end the warps' parts merge through the stages' shared memory.
template <int Bits, int D, class Meta, int Quads>
constexpr std::size_t heads_smem() {
  using Values = head_tiles::HeadTiles<Bits, D, Meta, Quads>;
  return (kThreads / 32) * Values::kStages * sizeof(typename Values::Stage);
}
// Blocks per SM: what the shared memory allows (228 KB per SM, 1 KB of it reserved per block), at
// most 4, so that the registers are not capped below what fits anyway (2-bit values at the serving
// shape: 139 us at 4 blocks, 144 at 3). A stage in flight per warp keeps enough bytes in flight
// with 8 warps per SM.
template <int Bits, int D, class Meta, int Quads>
constexpr int heads_blocks() {
  using Values = head_tiles::HeadTiles<Bits, D, Meta, Quads>;
  const std::size_t block = heads_smem<Bits, D, Meta, Quads>() + (kThreads / 32) * sizeof(typename Values::ProbScratch) + 1024;
  const int fit = static_cast<int>((228 * 1024) / block);
  return fit < 1 ? 1 : fit > 4 ? 4 : fit;
}

template <int Bits, int D, class Meta, int Quads, bool Softmax, bool Sym>
__global__ void __launch_bounds__(kThreads, (heads_blocks<Bits, D, Meta, Quads>()))
    outputs_heads_kernel(OutputsParams p, int stretches_per_split, SoftmaxParts sp) {
  wait_for_prior_kernels();
  using Values = head_tiles::HeadTiles<Bits, D, Meta, Quads, Sym>;
  using Stage = typename Values::Stage;
  constexpr int kWarps = kThreads / 32, kMTiles = Values::kMTiles, kHeads = Values::kHeads;
  extern __shared__ __align__(16) unsigned char dynamic_smem[];  // [kWarps][Values::kStages] stages, then the warps' sums
  __shared__ typename Values::ProbScratch probs[kWarps];
  const int tokens = p.values.shape.tokens, group = p.group, r = blockIdx.y, split = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  Stage* stages = reinterpret_cast<Stage*>(dynamic_smem) + Values::kStages * warp;
  const int stretches = (tokens + kStretch - 1) / kStretch;
  const int first = split * stretches_per_split, last = min(stretches, first + stretches_per_split);
  const float* prob = p.probs + static_cast<long long>(r) * group * tokens;
  const float* sigma = p.token_scale ? p.token_scale + static_cast<long long>(r) * tokens : nullptr;
  Values values;
  values.init(p.values, r);
  // As outputs_warp_kernel's, for every head of the group (heads past it weigh 0).
  auto load_probs = [&](int st, float (&pr)[kHeads][4], float (&sg)[4]) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int tok = min(st * kStretch + 32 * u + lane, tokens - 1);
      sg[u] = sigma ? __ldg(sigma + tok) : 1.0f;
#pragma unroll
      for (int h = 0; h < kHeads; ++h) pr[h][u] = h < group ? __ldg(prob + static_cast<long long>(h) * tokens + tok) : 0.0f;
    }
  };
  float acc[kMTiles][Quads][2] = {};
  // Softmax: each head's running max (the same in every lane) and this lane's share of its sum.
  float run_m[kHeads], run_l[kHeads];
#pragma unroll
  for (int h = 0; h < kHeads; ++h) run_m[h] = -INFINITY, run_l[h] = 0.0f;
  float next_p[kHeads][4], next_sigma[4];
  int next_zero = 0;
  int st = first + warp;
  if (st < last) load_probs(st, next_p, next_sigma), next_zero = values.zero_start(st), values.copy_stretch(st, stages[0]);
  for (int i = 0; st < last; st += kWarps, ++i) {
    float pc[kHeads][4];
    bool live[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) live[u] = st * kStretch + 32 * u + lane < tokens;
    if constexpr (Softmax) {
      float corr[Quads];  // what the lane's accumulators (head 4q + t) are rescaled by
#pragma unroll
      for (int q = 0; q < Quads; ++q) corr[q] = 1.0f;
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        if (h >= group) {
#pragma unroll
          for (int u = 0; u < 4; ++u) pc[h][u] = 0.0f;
          continue;
        }
        float s[4], e[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) s[u] = live[u] ? next_p[h][u] * sp.scale : -INFINITY;
        const float c = attention_detail::warp_softmax_step(s, run_m[h], run_l[h], e);
#pragma unroll
        for (int u = 0; u < 4; ++u) pc[h][u] = e[u] * next_sigma[u];
        if (h % 4 == values.t) corr[h / 4] = c;
      }
#pragma unroll
      for (int m = 0; m < kMTiles; ++m)
#pragma unroll
        for (int q = 0; q < Quads; ++q) acc[m][q][0] *= corr[q], acc[m][q][1] *= corr[q];
    } else {
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int h = 0; h < kHeads; ++h) pc[h][u] = live[u] ? next_p[h][u] * next_sigma[u] : 0.0f;
    }
    const int zero_first = next_zero, next = st + kWarps;
    if (next < last) load_probs(next, next_p, next_sigma), next_zero = values.zero_start(next);
    values.copy_next(i, next, last, stages);
    values.stage_probs(pc, group, probs[warp]);
    values.locate(st);
    Stage& cur = values.landed(i, stages);
    values.expand_zeros(cur, st, zero_first);
    typename Values::Loads l[2];
    values.load(cur, 0, l[0]);
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
      if (m + 1 < kMTiles) values.load(cur, m + 1, l[(m + 1) % 2]);
      values.product(l[m % 2], acc[m]);
    }
  }
  // Lane (g, t) holds head 4q + t, channels 16m + 2g and 16m + 2g + 1; the stages are free once every
  // warp is past its last stretch.
  copy_wait<0>();
  __syncthreads();
  if constexpr (Softmax) {
    auto& w = *reinterpret_cast<attention_detail::WarpParts<kWarps, kHeads, D>*>(dynamic_smem);
#pragma unroll
    for (int q = 0; q < Quads; ++q) {
      const int h = 4 * q + (lane & 3);
      if (h < group)
#pragma unroll
        for (int m = 0; m < kMTiles; ++m) *reinterpret_cast<float2*>(&w.o[warp][h][16 * m + 2 * (lane >> 2)]) = make_float2(acc[m][q][0], acc[m][q][1]);
    }
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      if (h >= group) break;
      float l = run_l[h];
      for (int off = 16; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
      if (lane == 0) w.m[warp][h] = run_m[h], w.l[warp][h] = l;
    }
    __syncthreads();
    attention_detail::write_part(w, sp.parts, split, r, group);
    return;
  }
  float* sums = reinterpret_cast<float*>(dynamic_smem);  // [kWarps][group][D]
#pragma unroll
  for (int q = 0; q < Quads; ++q) {
    const int h = 4 * q + (lane & 3);
    if (h < group)
#pragma unroll
      for (int m = 0; m < kMTiles; ++m)
        *reinterpret_cast<float2*>(sums + (warp * group + h) * D + 16 * m + 2 * (lane >> 2)) = make_float2(acc[m][q][0], acc[m][q][1]);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < group * D; i += kThreads) {
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += sums[w * group * D + i];
    p.partial[(static_cast<long long>(split) * gridDim.y + r) * group * D + i] = v;
  }
}

// One query head: each warp streams its own stretches (gpu/value_tiles.cuh: B per warp, every m-tile
// of the values per warp), with no barrier per stretch. The warp copies its next Stages - 1 stretches
// into its ring of shared-memory stages (cp.async) while it works on the current one, and loads a
// stretch's probabilities a stretch ahead. The block's warps add up at the end. Softmax: as the GQA
// kernel's, for one head (the values half of the one-head attention given its scores); each split's
// block also takes its share of the fp16 windows into its part (one_head_part). The group mode is a
// template axis: 2-bit hybrid values at the paper shape, N = 32768, 24.9 -> 23.5 us against the mode
// read at run time (H100, docs/PERF.md).
template <int Bits, int D, class Meta, bool Softmax, GroupMode Mode, int Stages>
__global__ void __launch_bounds__(kThreads, 4) outputs_warp_kernel(OutputsParams p, int stretches_per_split, SoftmaxParts sp) {
  wait_for_prior_kernels();
  using Values = value_tiles::ValueTiles<Bits, D, Meta, static_cast<int>(Mode), Stages>;
  using Stage = typename Values::Stage;
  constexpr int kWarps = kThreads / 32, kMTiles = Values::kMTiles;
  // m-tile loads in flight ahead of the product: two where the registers allow (3- and 8-bit
  // codes' larger loads would spill at head_dim 128).
  constexpr int kAhead = Bits == 3 || Bits == 8 ? 1 : 2;
  extern __shared__ __align__(16) unsigned char dynamic_smem[];  // [kWarps][Values::kStages] stages
  __shared__ typename Values::ProbScratch probs[kWarps];
  __shared__ float sums[kWarps][D];
  const int tokens = p.values.shape.tokens, r = blockIdx.y, split = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  Stage* stages = reinterpret_cast<Stage*>(dynamic_smem) + Values::kStages * warp;
  const int stretches = (tokens + kStretch - 1) / kStretch;
  const int first = split * stretches_per_split, last = min(stretches, first + stretches_per_split);
  const float* prob = p.probs + static_cast<long long>(r) * tokens;
  const float* sigma = p.token_scale ? p.token_scale + static_cast<long long>(r) * tokens : nullptr;
  Values values;
  values.init(p.values, r);
  // A stretch's probabilities and token scales, loaded a stretch ahead and multiplied only when the
  // stretch starts: a product right after the loads would wait for them there. tokens is a multiple
  // of 32 (outputs_mma_supported), so each of the stretch's tiles is whole or past the end, where
  // nothing is loaded (weighted 0 when the stretch starts): one address a stretch.
  auto load_probs = [&](int st, float (&pr)[4], float (&sg)[4]) {
    const long long at = static_cast<long long>(st) * kStretch + lane;
    const float* pt = prob + at;
    const float* sgt = sigma ? sigma + at : nullptr;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const bool live = st * kStretch + 32 * u < tokens;
      pr[u] = live ? __ldg(pt + 32 * u) : 0.0f;
      sg[u] = sgt && live ? __ldg(sgt + 32 * u) : 1.0f;
    }
  };
  float acc[kMTiles][2] = {};
  float run_m = -INFINITY, run_l = 0.0f;  // Softmax: the warp's running max, this lane's share of its sum
  float next_p[4], next_sigma[4];
  int next_zero = 0;
  int st = first + warp;
  if (st < last) load_probs(st, next_p, next_sigma), next_zero = values.zero_start(st), values.copy_first(st, kWarps, last, stages);
  for (int i = 0; st < last; st += kWarps, ++i) {
    float pc[4], corr = 1.0f;
    if constexpr (Softmax) {
      float s[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) s[u] = st * kStretch + 32 * u + lane < tokens ? next_p[u] * sp.scale : -INFINITY;
      corr = attention_detail::warp_softmax_step(s, run_m, run_l, pc);
#pragma unroll
      for (int u = 0; u < 4; ++u) pc[u] *= next_sigma[u];
    } else {
#pragma unroll
      for (int u = 0; u < 4; ++u) pc[u] = st * kStretch + 32 * u + lane < tokens ? next_p[u] * next_sigma[u] : 0.0f;
    }
    const int zero_first = next_zero, next = st + kWarps;
    if (next < last) load_probs(next, next_p, next_sigma), next_zero = values.zero_start(next);
    values.copy_next(i, st + (Values::kStages - 1) * kWarps, last, stages);
    const float inv_range = values.stage_probs(pc, lane, zero_first, probs[warp]);
    const Stage& cur = values.landed(i, stages);
    // Every m-tile, kAhead loads ahead (the hybrid zero points' global loads with them).
    typename Values::Loads l[kAhead + 1];
#pragma unroll
    for (int m = 0; m < kAhead; ++m) values.load(cur, st, m, l[m]);
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
      if (m + kAhead < kMTiles) values.load(cur, st, m + kAhead, l[(m + kAhead) % (kAhead + 1)]);
      float out[2];
      values.product(l[m % (kAhead + 1)], out);
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        if constexpr (Softmax) acc[m][k] = acc[m][k] * corr + out[k] * inv_range;
        else acc[m][k] += out[k] * inv_range;
      }
    }
  }
  if constexpr (Softmax) {
    // The warps' parts go through the stages, free once every warp is past its last stretch.
    using WarpParts = attention_detail::OneHeadSmem<D>;
    static_assert(kWarps == 4 && kWarps * Values::kStages * sizeof(Stage) >= sizeof(WarpParts), "the warps' parts fit in their stages");
    copy_wait<0>();
    __syncthreads();
    const SoftmaxWindows& win = sp.windows;
    attention_detail::one_head_part<D>(values, acc, run_m, run_l, *reinterpret_cast<WarpParts*>(dynamic_smem), sp.parts, split, r, win.keys, win.values,
                                       win.tokens, win.queries, sp.scale);
    return;
  }
  values.store_sums(acc, sums[warp]);
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += kThreads) {
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += sums[w][c];
    p.partial[(static_cast<long long>(split) * gridDim.y + r) * D + c] = v;
  }
}

// How a launch over stretches picks its splits. wave: as many as one wave of resident blocks holds.
// two_per_sm: at most two blocks per multiprocessor where that still gives each warp two stretches
// or more, else as wave. The one-head GEMV takes two_per_sm: the same bytes per multiprocessor
// stream faster through half the warps (H100, paper shape, 2-bit hybrid values: N = 32768 22.3 ->
// 20.9 us, 16384 13.7 -> 12.8; at 4096, a stretch a warp, the wave's 7.3 beats 8.0; docs/PERF.md).
// Its softmax form keeps the wave: with two stages, 8 splits cost the unfused attention 50.7 -> 58.7
// us; the 2-bit form's three stages (warp_stages) hold it to two blocks per multiprocessor anyway.
enum class Splits { wave, two_per_sm };

// A split-sequence launch of any of the kernels over stretches: at most p.splits runs (runs.splits).
template <class Kernel, class... Extra>
cudaError_t launch_runs(Kernel kernel, const OutputsParams& p, std::size_t smem, Splits policy, SplitRuns& runs, cudaStream_t stream, const Extra&... extra) {
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kThreads, smem, info));
  const int stretches = (p.values.shape.tokens + kStretch - 1) / kStretch;
  runs = split_runs(stretches, p.splits, info, p.values.regions);
  if (policy == Splits::two_per_sm && info.blocks_per_sm > 2) {
    LaunchInfo two = info;
    two.blocks_per_sm = 2;
    const SplitRuns fewer = split_runs(stretches, p.splits, two, p.values.regions);
    if (fewer.per_split >= 2 * (kThreads / 32)) runs = fewer;
  }
  return launch_kernel(kernel, dim3(static_cast<unsigned>(runs.splits), static_cast<unsigned>(p.values.regions)), dim3(kThreads), smem, stream, p, runs.per_split,
                       extra...);
}

// A GEMV's launch, then the splits' partial sums added in order.
template <class Kernel, class... Extra>
cudaError_t launch_splits(Kernel kernel, int heads, int head_dim, const OutputsParams& p, cudaStream_t stream, std::size_t smem, Splits policy,
                          const Extra&... extra) {
  SplitRuns runs;
  KVQ_CUDA_TRY(launch_runs(kernel, p, smem, policy, runs, stream, extra...));
  return add_splits(p.partial, runs.splits, static_cast<long long>(p.values.regions) * heads * head_dim, p.outputs, stream);
}

// The one-head kernel's dynamic shared memory: the warps' stages.
template <int Bits, int D, class Meta, int Stages>
constexpr std::size_t warp_smem() {
  using Values = value_tiles::ValueTiles<Bits, D, Meta, value_tiles::kModeAtRunTime, Stages>;
  return (kThreads / 32) * Values::kStages * sizeof(typename Values::Stage);
}

// Stages per warp in the one-head kernel: 2, and 3 for the 2-bit softmax form, whose third stage
// leaves room for two blocks per multiprocessor, so its wave is half as many splits (H100, paper
// shape, hybrid values, N = 32768: attention 50.5 -> 49.7 us; 4 stages 51.6). The GEMV lost with 3
// (20.9 -> 22.5 us at the same two blocks per multiprocessor) and 4 (23.6); other widths are untried
// (docs/PERF.md).
template <int Bits, bool Softmax>
constexpr int warp_stages() {
  return Softmax && Bits == 2 ? 3 : 2;
}

template <int Bits, int D, class Meta>
cudaError_t launch_warps(const OutputsParams& p, cudaStream_t stream) {
  constexpr int kStages = warp_stages<Bits, false>();
  KVQ_DISPATCH_MODE(p.values.shape.mode, Mode, {
    return launch_splits(outputs_warp_kernel<Bits, D, Meta, false, Mode, kStages>, 1, D, p, stream, warp_smem<Bits, D, Meta, kStages>(), Splits::two_per_sm,
                         SoftmaxParts{});
  })
  return cudaErrorInvalidValue;
}

// The windows' part comes after the splits' parts.
template <int Bits, int D, class Meta>
cudaError_t launch_warp_softmax(const OutputsParams& p, const SoftmaxParts& sp, int& used, cudaStream_t stream) {
  constexpr int kStages = warp_stages<Bits, true>();
  SplitRuns runs;
  cudaError_t e = cudaErrorInvalidValue;
  KVQ_DISPATCH_MODE(p.values.shape.mode, Mode, {
    e = launch_runs(outputs_warp_kernel<Bits, D, Meta, true, Mode, kStages>, p, warp_smem<Bits, D, Meta, kStages>(), Splits::wave, runs, stream, sp);
  })
  used = runs.splits;
  return e;
}

template <int Bits, int D, class Meta, int Quads>
constexpr std::size_t heads_launch_smem() {
  using Values = head_tiles::HeadTiles<Bits, D, Meta, Quads>;
  constexpr std::size_t kSmem = heads_smem<Bits, D, Meta, Quads>();
  static_assert(kSmem >= (kThreads / 32) * Values::kHeads * D * sizeof(float), "the warps' sums fit in their stages");
  static_assert(kSmem >= sizeof(attention_detail::WarpParts<kThreads / 32, Values::kHeads, D>), "the warps' parts fit in their stages");
  return kSmem;
}

// Symmetric values take the Sym instantiation.
template <int Bits, int D, class Meta, int Quads>
cudaError_t launch_heads(const OutputsParams& p, cudaStream_t stream) {
  constexpr std::size_t kSmem = heads_launch_smem<Bits, D, Meta, Quads>();
  if (p.values.shape.mode == GroupMode::sym)
    return launch_splits(outputs_heads_kernel<Bits, D, Meta, Quads, false, true>, p.group, D, p, stream, kSmem, Splits::wave, SoftmaxParts{});
  return launch_splits(outputs_heads_kernel<Bits, D, Meta, Quads, false, false>, p.group, D, p, stream, kSmem, Splits::wave, SoftmaxParts{});
}

template <int Bits, int D, class Meta, int Quads>
cudaError_t launch_softmax(const OutputsParams& p, const SoftmaxParts& sp, int& used, cudaStream_t stream) {
  constexpr std::size_t kSmem = heads_launch_smem<Bits, D, Meta, Quads>();
  SplitRuns runs;
  const cudaError_t e = p.values.shape.mode == GroupMode::sym ? launch_runs(outputs_heads_kernel<Bits, D, Meta, Quads, true, true>, p, kSmem, Splits::wave, runs, stream, sp)
                                                               : launch_runs(outputs_heads_kernel<Bits, D, Meta, Quads, true, false>, p, kSmem, Splits::wave, runs, stream, sp);
  used = runs.splits;
  return e;
}

}  // namespace

bool outputs_mma_supported(const DeviceRegions& values, int group) {
  const RegionShape& s = values.shape;
  // A lane's chunk (32 tokens) must lie in one group.
  const bool groups = s.group_size == 32 || s.group_size == 64 || s.group_size == 128;
  return bits_built(s.bits) && head_dim_built(s.head_dim) && groups && !s.channel_axis && s.tokens % s.group_size == 0 && heads_built(group) &&
         aligned16(values);
}

cudaError_t outputs_mma(const OutputsParams& p, cudaStream_t stream) {
  const RegionShape& s = p.values.shape;
  if (!outputs_mma_supported(p.values, p.group) || p.splits < 1) return cudaErrorInvalidValue;
  if (p.group == 1) {
    KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, {
      if (s.meta_fp16) return launch_warps<B, D, std::uint16_t>(p, stream);
      return launch_warps<B, D, std::uint32_t>(p, stream);
    }))
  }
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, {
    if (s.meta_fp16) return p.group <= 4 ? launch_heads<B, D, std::uint16_t, 1>(p, stream) : launch_heads<B, D, std::uint16_t, 2>(p, stream);
    return p.group <= 4 ? launch_heads<B, D, std::uint32_t, 1>(p, stream) : launch_heads<B, D, std::uint32_t, 2>(p, stream);
  }))
  return cudaErrorInvalidValue;
}

cudaError_t outputs_softmax_mma(const OutputsParams& p, float scale, const attention_detail::Parts& parts, const SoftmaxWindows& windows, int& used,
                                bool& windows_taken, cudaStream_t stream) {
  const RegionShape& s = p.values.shape;
  used = 0;
  windows_taken = false;
  if (!outputs_mma_supported(p.values, p.group) || p.splits < 1 || windows.tokens < 0) return cudaErrorInvalidValue;
  if (p.group == 1) {
    windows_taken = true;
    const SoftmaxParts sp{scale, parts, windows};
    KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, {
      if (s.meta_fp16) return launch_warp_softmax<B, D, std::uint16_t>(p, sp, used, stream);
      return launch_warp_softmax<B, D, std::uint32_t>(p, sp, used, stream);
    }))
    return cudaErrorInvalidValue;
  }
  const SoftmaxParts sp{scale, parts, SoftmaxWindows{}};
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, {
    if (s.meta_fp16) return p.group <= 4 ? launch_softmax<B, D, std::uint16_t, 1>(p, sp, used, stream) : launch_softmax<B, D, std::uint16_t, 2>(p, sp, used, stream);
    return p.group <= 4 ? launch_softmax<B, D, std::uint32_t, 1>(p, sp, used, stream) : launch_softmax<B, D, std::uint32_t, 2>(p, sp, used, stream);
  }))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
