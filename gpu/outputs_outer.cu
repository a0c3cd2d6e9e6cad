// Outputs over channel-axis values: the outer layout (KIVI's per-token values, groups of G channels
// within a token). Each group spans channels, not the reduction over tokens, so its scale multiplies
// the token's probability: out_c = sum_t (p_t a_t) u_tc + sum_t p_t c_t (outer_terms.cuh).
//
// A lane owns a slice of Codes channels (one group: Codes <= G) of one token; D / Codes lanes cover a
// token and a warp step covers 32 Codes / D tokens. A warp takes 32-token blocks (one hybrid
// zero-block), loading the next block's slices while it computes one (1-2 heads). Accumulators stay per lane until
// the end: summed over the lanes of the same slice, then over warps, into this split's partial sums.
// Codes shrinks as heads grow (32, 16, 8 channels for 1, 2, 4-8 heads) to bound the accumulators.

#include "gpu/code_slices.cuh"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/gemv.h"
#include "gpu/launch.h"
#include "gpu/outer_terms.cuh"
#include "gpu/outputs_outer_mma.h"
#include "gpu/reduce.cuh"

namespace kvq::gpu {
namespace {

using outer::GroupTerms;
using outer::kWarps;

// What a 32-token block needs from memory (loaded one block ahead for 1-2 heads): the lane's slice of each of its
// tokens, their |scale|, mode bit and (asym) zero point, and, where few enough to keep in registers,
// the probabilities (token scales folded in). Hybrid zero points follow a scan over the mode bits and
// are read with the block.
template <int Bits, int D, int Heads, int Codes>
struct BlockFetch {
  static constexpr int kLanesPerToken = D / Codes, kTokensPerStep = 32 / kLanesPerToken, kSteps = 32 / kTokensPerStep;
  static constexpr bool kProbs = kSteps * Heads <= 16;
  std::uint32_t w[kSteps][slices::kWords<Bits, Codes>];
  float scale[kSteps], zero[kSteps];
  bool sign[kSteps];
  float prob[kProbs ? kSteps : 1][Heads];

  __device__ __forceinline__ void load(const OutputsParams& p, const std::uint32_t* codes, long long groups0, int blk, int slot, int channel0) {
    const RegionShape& s = p.values.shape;
    const int r = blockIdx.y, groups_per_token = D / s.group_size, g = channel0 / s.group_size;
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      const int t = blk * 32 + k * kTokensPerStep + slot;
      const bool live = t < s.tokens;
      const long long index = groups0 + static_cast<long long>(t) * groups_per_token + g;
      if (live) {
        slices::load<Bits, Codes>(codes + (static_cast<long long>(t) * (D / 32) + channel0 / 32) * Bits, channel0 % 32, w[k]);
        scale[k] = meta_value(p.values.scales, index, s.meta_fp16, sign[k]);
      } else {
#pragma unroll
        for (int i = 0; i < slices::kWords<Bits, Codes>; ++i) w[k][i] = 0;
        scale[k] = 0.0f, sign[k] = false;
      }
      zero[k] = live && s.mode == GroupMode::asym ? zero_value(p.values.zeros, index, s.meta_fp16) : 0.0f;
      if constexpr (kProbs) {
        // Token scales (rotation family) fold into the weights: sum_t p_t sigma_t x'_t.
        const float sigma = p.token_scale && live ? p.token_scale[static_cast<long long>(r) * s.tokens + t] : 1.0f;
#pragma unroll
        for (int h = 0; h < Heads; ++h) {
          const long long row = static_cast<long long>(r) * p.group + h;
          prob[k][h] = live && h < p.group ? outer::weight(p, p.probs[row * s.tokens + t], outer::row_max(p, row)) * sigma : 0.0f;
        }
      }
    }
  }
};

// Block (split, r): 32-token blocks [split * per_split, ...) of region r, warps taking every kWarps-th.
template <int Bits, int D, int Heads, int Codes>
__global__ void __launch_bounds__(kWarps * 32) outputs_channel(OutputsParams p, int per_split) {
  wait_for_prior_kernels();
  using Fetch = BlockFetch<Bits, D, Heads, Codes>;
  constexpr int kLanesPerToken = Fetch::kLanesPerToken, kTokensPerStep = Fetch::kTokensPerStep, kSteps = Fetch::kSteps;
  const RegionShape s = p.values.shape;
  const int split = blockIdx.x, r = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, G = s.group_size;
  const int part = lane % kLanesPerToken, slot = lane / kLanesPerToken;
  const int channel0 = part * Codes, g = channel0 / G, groups_per_token = D / G;
  const int blocks = (s.tokens + 31) / 32;
  const int b0 = split * per_split, b1 = min(blocks, b0 + per_split);
  const std::uint32_t* codes = p.values.codes + static_cast<long long>(r) * s.code_stride();
  const long long groups0 = static_cast<long long>(r) * s.group_stride();
  float acc[Heads][Codes] = {};
  float konst[Heads] = {};
  // One block ahead where the registers allow (measured on the H100: ahead for 1-2 heads, where the
  // fetch is small; in place for 4-8 heads, where the extra registers cost more occupancy than it gains).
  constexpr bool kAhead = Heads <= 2;
  Fetch cur, next;
  if (kAhead && b0 + warp < b1) cur.load(p, codes, groups0, b0 + warp, slot, channel0);
  for (int blk = b0 + warp; blk < b1; blk += kWarps) {
    if (!kAhead) {
      cur.load(p, codes, groups0, blk, slot, channel0);
    } else if (blk + kWarps < b1) {
      next.load(p, codes, groups0, blk + kWarps, slot, channel0);
    }
    // Hybrid: lane l describes token 32 blk + l: its asymmetric groups (bit k for group k) and, above
    // bit 8, the asymmetric groups of the block's earlier tokens (a warp scan).
    std::uint32_t info = 0;
    long long zero_block = 0;
    if (s.mode == GroupMode::hybrid) {
      const int t = blk * 32 + lane;
      std::uint32_t mask = 0;
      if (t < s.tokens) {
        for (int k = 0; k < groups_per_token; ++k) {
          bool sign;
          meta_value(p.values.scales, groups0 + static_cast<long long>(t) * groups_per_token + k, s.meta_fp16, sign);
          mask |= static_cast<std::uint32_t>(sign) << k;
        }
      }
      info = (static_cast<std::uint32_t>(warp_exclusive_sum(__popc(mask))) << 8) | mask;
      zero_block = p.values.zero_offset[r] + static_cast<long long>(p.values.zero_base[static_cast<long long>(r) * s.zero_block_stride() + blk]);
    }
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      const int token = k * kTokensPerStep + slot;
      const long long t = static_cast<long long>(blk) * 32 + token;
      const bool live = t < s.tokens;
      float zero = cur.zero[k];
      if (s.mode == GroupMode::hybrid) {
        const std::uint32_t about = __shfl_sync(0xffffffffu, info, token);
        if (live && cur.sign[k]) zero = zero_value(p.values.zeros, zero_block + (about >> 8) + __popc(about & ((1u << g) - 1u)), s.meta_fp16);
      }
      const GroupTerms terms = outer::group_terms<Bits>(s, cur.scale[k], cur.sign[k], zero);
      const float sigma = !Fetch::kProbs && p.token_scale && live ? p.token_scale[static_cast<long long>(r) * s.tokens + t] : 1.0f;
#pragma unroll
      for (int h = 0; h < Heads; ++h) {
        if (h >= p.group) break;
        float pt;
        if constexpr (Fetch::kProbs) {
          pt = cur.prob[k][h];
        } else {
          const long long row = static_cast<long long>(r) * p.group + h;
          pt = live ? outer::weight(p, p.probs[row * s.tokens + t], outer::row_max(p, row)) * sigma : 0.0f;
        }
        konst[h] += pt * terms.c;
        const float pa = pt * terms.a;
#pragma unroll
        for (int i = 0; i < Codes; ++i) acc[h][i] += pa * slices::unit_code<Bits, Codes>(cur.w[k], i);
      }
    }
    if (kAhead) cur = next;
  }
  // Lanes of the same slice differ in the bits above kLanesPerToken.
#pragma unroll
  for (int off = kLanesPerToken; off < 32; off <<= 1)
#pragma unroll
    for (int h = 0; h < Heads; ++h) {
      konst[h] += __shfl_xor_sync(0xffffffffu, konst[h], off);
#pragma unroll
      for (int i = 0; i < Codes; ++i) acc[h][i] += __shfl_xor_sync(0xffffffffu, acc[h][i], off);
    }
  __shared__ float red[kWarps][Heads][D];
  if (slot == 0)
#pragma unroll
    for (int h = 0; h < Heads; ++h)
#pragma unroll
      for (int i = 0; i < Codes; ++i) red[warp][h][channel0 + i] = acc[h][i] + konst[h];
  __syncthreads();
  for (int i = threadIdx.x; i < p.group * D; i += blockDim.x) {
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) sum += red[k][i / D][i % D];
    p.partial[((static_cast<long long>(split) * gridDim.y + r) * p.group) * D + i] = sum;
  }
}

template <int Bits, int D, int Heads, int Codes>
cudaError_t launch(const OutputsParams& p, cudaStream_t stream) {
  const auto kernel = outputs_channel<Bits, D, Heads, Codes>;
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kWarps * 32, 0, info));
  const SplitRuns runs = split_runs((p.values.shape.tokens + 31) / 32, p.splits, info, p.values.regions);
  KVQ_CUDA_TRY(launch_kernel(kernel, dim3(static_cast<unsigned>(runs.splits), static_cast<unsigned>(p.values.regions)), dim3(kWarps * 32), 0, stream, p, runs.per_split));
  return add_splits(p.partial, runs.splits, static_cast<long long>(p.values.regions) * p.group * D, p.outputs, stream);
}

// Slice width: 32 channels for one head, 16 for two, 8 for more (accumulators Heads x Codes <= 64),
// never wider than a group.
template <int Bits, int D, int Heads>
cudaError_t launch_slices(const OutputsParams& p, cudaStream_t stream) {
  constexpr int kWidest = Heads == 1 ? 32 : Heads == 2 ? 16 : 8;
  if constexpr (kWidest > 16) {
    if (p.values.shape.group_size < kWidest) return launch<Bits, D, Heads, 16>(p, stream);
  }
  return launch<Bits, D, Heads, kWidest>(p, stream);
}

}  // namespace

bool outputs_outer_supported(const RegionShape& s, int group) {
  return bits_built(s.bits) && head_dim_built(s.head_dim) && group_size_built(s.group_size) && heads_built(group) && s.channel_axis &&
         s.head_dim % s.group_size == 0 && s.tokens >= 0;
}

cudaError_t outputs_outer(const OutputsParams& p, cudaStream_t stream) {
  const RegionShape& s = p.values.shape;
  if (!outputs_outer_supported(s, p.group) || p.values.regions < 1 || p.splits < 1) return cudaErrorInvalidValue;
  if (p.kernel != GemvKernel::cuda_cores && outputs_outer_mma_supported(p.values, p.group)) return outputs_outer_mma(p, stream);  // else CUDA cores
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, KVQ_DISPATCH_HEAD_BUCKET(p.group, H, return launch_slices<B, D, H>(p, stream);)))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
