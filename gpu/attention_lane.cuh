#pragma once
// The fused attention over an InnerQ cache for one query head per kv head (gpu/attention.h), on the
// lane-owned keys and values of the GEMVs. Each warp streams its own 128-token stretches with no
// block barrier: the stretch's four key units (gpu/key_units.cuh) leave one score per lane per unit
// in registers, an online softmax runs over them with warp shuffles, the probabilities become B
// fragments for the stretch's four value tiles, and the warp takes every m-tile of the values
// (gpu/value_tiles.cuh), accumulating in registers rescaled by each new maximum. Loads run ahead:
// two key units (across stretches), and the next stretch's values into the other of the warp's two
// shared-memory stages (cp.async), read two m-tiles ahead. The block's warps merge into one part with
// the block's share of the fp16 windows (no launch of their own).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "gpu/attention_parts.h"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/fp16_part.cuh"
#include "gpu/key_bytes.cuh"
#include "gpu/key_units.cuh"
#include "gpu/launch.h"
#include "gpu/value_tiles.cuh"

namespace kvq::gpu::attention_detail {

constexpr int kLaneThreads = 128;

// Part blockIdx.x of region blockIdx.y: stretches [first, last), warp w taking first + w, first + w + 4, ...,
// then its share of the fp16 windows (one_head_part).
template <int KBits, int VBits, int D, GroupMode KMode>
__global__ void __launch_bounds__(kLaneThreads, 3) lane_attention_kernel(AttentionParams p, int stretches_per_part, Parts parts, std::uint32_t ones) {
  wait_for_prior_kernels();
  using Meta = std::uint16_t;
  using Keys = key_units::LaneKeys<KBits, D, Meta, KMode>;
  using Values = value_tiles::ValueTiles<VBits, D, Meta>;
  constexpr int kWarps = kLaneThreads / 32, kMTiles = Values::kMTiles, kUnit = key_units::kUnit;
  __shared__ typename Keys::BlockB key_b;
  __shared__ typename Keys::QueryShares key_shares;
  __shared__ typename Values::ProbScratch probs[kWarps];
  __shared__ OneHeadSmem<D> warp_parts;
  static_assert(kWarps == 4, "the warps' parts are slots 0-3 of one_head_part's");
  extern __shared__ __align__(16) unsigned char dynamic_smem[];
  using Stage = typename Values::Stage;
  const int r = blockIdx.y, part = blockIdx.x, warp = threadIdx.x >> 5;
  const int tokens = p.keys.shape.tokens, units = (tokens + kUnit - 1) / kUnit;
  const int stretches = (tokens + value_tiles::kStretch - 1) / value_tiles::kStretch;
  const int first = part * stretches_per_part, last = min(stretches, first + stretches_per_part);
  const float* key_sigma = p.key_token_scale ? p.key_token_scale + static_cast<long long>(r) * tokens : nullptr;
  const float* value_sigma = p.value_token_scale ? p.value_token_scale + static_cast<long long>(r) * tokens : nullptr;

  Keys keys;
  keys.init(p.keys, r);
  Values values;
  values.init(p.values, r);
  // Unit loads by a unit's place in its stretch: the unit two ahead goes into buffer (k + 2) % 4.
  typename Keys::Loads kb[4];
  int st = first + warp;
  Stage* stages = reinterpret_cast<Stage*>(dynamic_smem) + Values::kStages * warp;
  int next_zero = 0;  // the hybrid values' zero_start, a stretch ahead
  // q goes out first (key_units::copy_query, its own cp.async group), then the first stage and units.
  __shared__ __align__(16) float query_copy[kWarps][D];
  key_units::copy_query<D>(p.queries + static_cast<long long>(r) * D, query_copy[warp]);
  if (st < last) values.copy_stretch(st, stages[0]), next_zero = values.zero_start(st);
  if (st < last) {
    if (4 * st < units) keys.load(4 * st, kb[0]);
    if (4 * st + 1 < units) keys.load(4 * st + 1, kb[1]);
  }
  // The keys' B depends only on q and the lane: the block's warps build a quarter each. q's group is
  // the oldest; the first stage's (committed only where st < last) may still be in flight.
  if (st < last) copy_wait<1>();
  else copy_wait<0>();
  __syncwarp();
  keys.set_block_query(query_copy[warp], warp, p.keys, key_b, key_shares);
  const int g = keys.g, t = keys.t;

  float m_run = -INFINITY, l_run = 0.0f;  // l: this lane's share of the running sum
  float acc[kMTiles][2] = {};
  for (int i = 0; st < last; st += kWarps, ++i) {
    typename Values::Loads vb[3];
    const int next = st + kWarps;
    values.copy_next(i, next, last, stages);
    const int zero_first = next_zero;
    if (next < last) next_zero = values.zero_start(next);
    // Keys: lane t's token 32u + g + 8t of unit u of the stretch.
    float s[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int ahead = k < 2 ? 4 * st + k + 2 : 4 * next + k - 2;
      if ((k < 2 || next < last) && ahead < units) keys.load(ahead, kb[(k + 2) % 4]);
      const int u = 4 * st + k, tok = u * kUnit + g + 8 * t;
      s[k] = -INFINITY;
      if (u < units) {
        const float score = keys.score(u, kb[k], ones);
        if (tok < tokens) s[k] = score * p.scale * (key_sigma ? key_sigma[tok] : 1.0f);
      }
    }
    // Online softmax over the stretch's 128 scores, 4 per lane.
    float pv[4];
    const float corr = warp_softmax_step(s, m_run, l_run, pv);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int tok = (4 * st + k) * kUnit + g + 8 * t;
      if (value_sigma && tok < tokens) pv[k] *= value_sigma[tok];
    }
    const float inv_range = values.stage_probs(pv, g + 8 * t, zero_first, probs[warp]);
    const Stage& cur = values.landed(i, stages);
    values.load(cur, st, 0, vb[0]);
    values.load(cur, st, 1, vb[1]);
    // Values: every m-tile, two loads ahead, from shared memory.
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
      if (m + 2 < kMTiles) values.load(cur, st, m + 2, vb[(m + 2) % 3]);
      float out[2];
      values.product(vb[m % 3], out);
#pragma unroll
      for (int k = 0; k < 2; ++k) acc[m][k] = acc[m][k] * corr + out[k] * inv_range;
    }
  }

  // The warp's part: the quad's tiles summed onto one lane per channel, then the block's warps merged.
  one_head_part<D>(values, acc, m_run, l_run, warp_parts, parts, part, r, p.window_keys, p.window_values, p.window, p.window_queries, p.scale);
}

template <int KBits, int VBits, int D, GroupMode KMode>
cudaError_t launch_lane(const AttentionParams& p, const Parts& parts, int& used, bool& windows_taken, cudaStream_t stream) {
  auto kernel = lane_attention_kernel<KBits, VBits, D, KMode>;
  // The warps' value stages (the kernel's metadata is fp16).
  using Values = value_tiles::ValueTiles<VBits, D, std::uint16_t>;
  const std::size_t smem = (kLaneThreads / 32) * Values::kStages * sizeof(typename Values::Stage);
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kLaneThreads, smem, info));
  const int stretches = (p.keys.shape.tokens + value_tiles::kStretch - 1) / value_tiles::kStretch;
  const SplitRuns runs = split_runs(stretches, p.splits, info, p.keys.regions);
  windows_taken = p.window > 0;
  used = runs.splits;
  return launch_kernel(kernel, dim3(static_cast<unsigned>(runs.splits), static_cast<unsigned>(p.keys.regions)), dim3(kLaneThreads), smem, stream, p,
                       runs.per_split, parts, pairs::kOnes);
}

// The lane-owned kernel for keys of any group mode, when lane_attention_supported(p).
template <int KBits, int VBits>
cudaError_t lane_by_shape(const AttentionParams& p, const Parts& parts, int& used, bool& windows_taken, cudaStream_t stream) {
  KVQ_DISPATCH_HEAD_DIM(p.keys.shape.head_dim, D, KVQ_DISPATCH_MODE(p.keys.shape.mode, Mode, {
    return launch_lane<KBits, VBits, D, Mode>(p, parts, used, windows_taken, stream);
  }))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu::attention_detail
