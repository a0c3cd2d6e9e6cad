// Outputs over channel-axis values: the outer layout (KIVI's per-token values, groups of G channels
// within a token). Each group spans channels, not the reduction over tokens, so its scale multiplies
// the token's probability: out_c = sum_t (p_t a_t) u_tc + sum_t p_t c_t (outer_terms.cuh).
//
// A lane owns a slice of Codes channels (one group: Codes <= G) of one token; D / Codes lanes cover a
// token and a warp step covers 32 Codes / D tokens. A warp takes 32-token blocks (one hybrid
// zero-block), loading all of a block's slices before the arithmetic. Accumulators stay per lane until
// the end: summed over the lanes of the same slice, then over warps, into this split's partial sums.
// Codes shrinks as heads grow (32, 16, 8 channels for 1, 2, 4-8 heads) to bound the accumulators.
#include <algorithm>

#include "gpu/code_slices.cuh"
#include "gpu/cuda_check.h"
#include "gpu/dispatch.cuh"
#include "gpu/gemv.h"
#include "gpu/outer_terms.cuh"
#include "gpu/reduce.cuh"

namespace kvq::gpu {
namespace {

using outer::GroupTerms;
using outer::kWarps;

// Block (split, r): 32-token blocks [split * per_split, ...) of region r, warps taking every kWarps-th.
template <int Bits, int D, int Heads, int Codes>
__global__ void __launch_bounds__(kWarps * 32) outputs_channel(OutputsParams p) {
  constexpr int kLanesPerToken = D / Codes, kTokensPerStep = 32 / kLanesPerToken, kSteps = 32 / kTokensPerStep;
  constexpr int kSliceWords = slices::kWords<Bits, Codes>;
  const RegionShape s = p.values.shape;
  const int split = blockIdx.x, r = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, G = s.group_size;
  const int part = lane % kLanesPerToken, slot = lane / kLanesPerToken;
  const int channel0 = part * Codes, g = channel0 / G, groups_per_token = D / G;
  const int blocks = (s.tokens + 31) / 32, per_split = (blocks + p.splits - 1) / p.splits;
  const int b0 = split * per_split, b1 = min(blocks, b0 + per_split);
  const std::uint32_t* codes = p.values.codes + static_cast<long long>(r) * s.code_words();
  const long long groups0 = static_cast<long long>(r) * s.groups();
  float acc[Heads][Codes] = {};
  float konst[Heads] = {};
  for (int blk = b0 + warp; blk < b1; blk += kWarps) {
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
      const int mine = __popc(mask);
      int before = mine;
#pragma unroll
      for (int k = 1; k < 32; k <<= 1) {
        const int up = __shfl_up_sync(0xffffffffu, before, k);
        if (lane >= k) before += up;
      }
      info = (static_cast<std::uint32_t>(before - mine) << 8) | mask;
      zero_block = p.values.zero_offset[r] + static_cast<long long>(p.values.zero_base[static_cast<long long>(r) * s.zero_blocks() + blk]);
    }
    std::uint32_t w[kSteps][kSliceWords];
    float scale[kSteps];
    bool sign[kSteps];
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      const int t = blk * 32 + k * kTokensPerStep + slot;
      if (t < s.tokens) {
        slices::load<Bits, Codes>(codes + (static_cast<long long>(t) * (D / 32) + channel0 / 32) * Bits, channel0 % 32, w[k]);
        scale[k] = meta_value(p.values.scales, groups0 + static_cast<long long>(t) * groups_per_token + g, s.meta_fp16, sign[k]);
      } else {
#pragma unroll
        for (int i = 0; i < kSliceWords; ++i) w[k][i] = 0;
        scale[k] = 0.0f, sign[k] = false;
      }
    }
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      const int token = k * kTokensPerStep + slot;
      const long long t = static_cast<long long>(blk) * 32 + token;
      long long zero_index = 0;
      if (s.mode == GroupMode::hybrid) {
        const std::uint32_t about = __shfl_sync(0xffffffffu, info, token);
        zero_index = zero_block + (about >> 8) + __popc(about & ((1u << g) - 1u));
      }
      const bool live = t < s.tokens;
      const GroupTerms terms = live ? outer::group_terms<Bits>(p.values, scale[k], sign[k], groups0 + t * groups_per_token + g, zero_index) : GroupTerms{};
      // Token scales (rotation family) fold into the weights: sum_t p_t sigma_t x'_t.
      const float sigma = p.token_scale && live ? p.token_scale[static_cast<long long>(r) * s.tokens + t] : 1.0f;
#pragma unroll
      for (int h = 0; h < Heads; ++h) {
        if (h >= p.group) break;
        const float pt = live ? p.probs[(static_cast<long long>(r) * p.group + h) * s.tokens + t] * sigma : 0.0f;
        konst[h] += pt * terms.c;
        const float pa = pt * terms.a;
#pragma unroll
        for (int i = 0; i < Codes; ++i) acc[h][i] += pa * slices::unit_code<Bits, Codes>(w[k], i);
      }
    }
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
  const dim3 grid(static_cast<unsigned>(p.splits), static_cast<unsigned>(p.values.regions));
  outputs_channel<Bits, D, Heads, Codes><<<grid, kWarps * 32, 0, stream>>>(p);
  KVQ_CUDA_TRY(cudaGetLastError());
  const long long n = static_cast<long long>(p.values.regions) * p.group * D;
  sum_splits<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(p.partial, p.splits, n, p.outputs);
  return cudaGetLastError();
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
  const bool bits = s.bits == 2 || s.bits == 3 || s.bits == 4 || s.bits == 8;
  const bool dims = s.head_dim == 64 || s.head_dim == 128;
  const bool groups = s.group_size == 16 || s.group_size == 32 || s.group_size == 64 || s.group_size == 128;
  return bits && dims && groups && s.channel_axis && s.head_dim % s.group_size == 0 && s.tokens >= 0 && group >= 1 && group <= 8;
}

cudaError_t outputs_outer(const OutputsParams& p, cudaStream_t stream) {
  const RegionShape& s = p.values.shape;
  if (!outputs_outer_supported(s, p.group) || p.values.regions < 1 || p.splits < 1) return cudaErrorInvalidValue;
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, KVQ_DISPATCH_HEAD_BUCKET(p.group, H, return launch_slices<B, D, H>(p, stream);)))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
