// Scores over token-axis keys: the outer layout (KIVI's per-channel keys, groups of G tokens within
// a channel). Each group spans tokens, not the reduction, so its scale multiplies q once per tile and
// channel rather than once per group sum: score_t = sum_c (q_c a_c) u_tc + sum_c q_c c_c
// (outer_terms.cuh). scores_outer takes the tensor-core kernel (scores_outer_mma.cu) where it supports
// the shape; this file's CUDA-core kernel takes the rest, and GemvKernel::cuda_cores.
//
// A warp takes one 32-token tile at a time: lane l loads the chunks of channels l, l + 32, ... (the
// warp's loads are contiguous), accumulates all 32 tokens of the tile over its channels, and a
// transposing butterfly (31 shuffles) leaves token l's score in lane l. A tile's chunks are loaded
// before any arithmetic, so a warp keeps D/32 chunks in flight; heads sharing the kv head decode the
// same registers again.
#include <algorithm>

#include "gpu/code_slices.cuh"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/gemv.h"
#include "gpu/launch.h"
#include "gpu/outer_terms.cuh"
#include "gpu/scores_outer_mma.h"

namespace kvq::gpu {
namespace {

using outer::GroupTerms;
using outer::kWarps;
constexpr int kMaxHeads = 8;

// One butterfly step: lanes with `Step` set keep the upper half of v[0 .. 2 Step), the others the lower,
// each adding its partner's copy of the half it keeps.
template <int Step>
__device__ __forceinline__ void transpose_step(float (&v)[32], bool upper) {
#pragma unroll
  for (int i = 0; i < Step; ++i) {
    const float send = upper ? v[i] : v[i + Step];
    const float keep = upper ? v[i + Step] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, Step);
  }
}

// v[i] summed over the warp for every i, with the sum for i = lane left in v[0] (steps as separate
// instantiations so every index is a constant and v stays in registers).
__device__ __forceinline__ float transpose_sum(float (&v)[32], int lane) {
  transpose_step<16>(v, lane & 16);
  transpose_step<8>(v, lane & 8);
  transpose_step<4>(v, lane & 4);
  transpose_step<2>(v, lane & 2);
  transpose_step<1>(v, lane & 1);
  return v[0];
}

// Block (x, r): tiles [x * tiles_per_block, ...) of region r, the warps taking every kWarps-th tile.
template <int Bits, int D>
__global__ void __launch_bounds__(kWarps * 32) scores_token(ScoresParams p, int tiles_per_block) {
  wait_for_prior_kernels();
  constexpr int kPer = D / 32;  // channels lane, lane + 32, ...
  const RegionShape s = p.keys.shape;
  const int r = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, G = s.group_size;
  const int rows = s.tokens / G, tiles = (s.tokens + 31) / 32;
  const int first = blockIdx.x * tiles_per_block, last = min(tiles, first + tiles_per_block);
  // Queries in shared memory: the head loop stays rolled (unrolled, it would keep every decoded code
  // live across heads).
  __shared__ float q_s[kMaxHeads][D];
  for (int i = threadIdx.x; i < p.group * D; i += blockDim.x) q_s[i / D][i % D] = p.queries[(static_cast<long long>(r) * p.group) * D + i];
  __syncthreads();
  const std::uint32_t* codes = p.keys.codes + static_cast<long long>(r) * s.code_stride();
  const long long groups0 = static_cast<long long>(r) * s.group_stride();
  for (int tile = first + warp; tile < last; tile += kWarps) {
    std::uint32_t w[kPer][Bits];
#pragma unroll
    for (int e = 0; e < kPer; ++e) slices::load_words<Bits>(codes + (static_cast<long long>(tile) * D + lane + 32 * e) * Bits, w[e]);
    // Terms of the group rows of tokens 0..15 and 16..31 of the tile (one row unless G == 16). A row
    // past the last (the unfilled half of a final tile) gets zero terms; its tokens are not stored.
    GroupTerms terms[2][kPer];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = (tile * 32 + half * 16) / G;
      if (half == 1 && G >= 32) {
#pragma unroll
        for (int e = 0; e < kPer; ++e) terms[1][e] = terms[0][e];
        break;
      }
      if (row >= rows) {
#pragma unroll
        for (int e = 0; e < kPer; ++e) terms[half][e] = GroupTerms{};
        continue;
      }
      // Hybrid: a group's compact zero sits after the asymmetric groups of lower channels in its row.
      const long long zero_row = s.mode == GroupMode::hybrid
                                     ? p.keys.zero_offset[r] + static_cast<long long>(p.keys.zero_base[static_cast<long long>(r) * s.zero_block_stride() + row])
                                     : 0;
      int before = 0;
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        const long long index = groups0 + static_cast<long long>(row) * D + lane + 32 * e;
        bool sign;
        const float scale = meta_value(p.keys.scales, index, s.meta_fp16, sign);
        float zero = 0.0f;
        if (s.mode == GroupMode::asym) zero = zero_value(p.keys.zeros, index, s.meta_fp16);
        if (s.mode == GroupMode::hybrid) {
          const unsigned mask = __ballot_sync(0xffffffffu, sign);
          if (sign) zero = zero_value(p.keys.zeros, zero_row + before + __popc(mask & ((1u << lane) - 1u)), s.meta_fp16);
          before += __popc(mask);
        }
        terms[half][e] = outer::group_terms<Bits>(s, scale, sign, zero);
      }
    }
    const int live = min(32, s.tokens - tile * 32);
    const long long t = static_cast<long long>(tile) * 32 + lane;
    const float sigma = p.token_scale && lane < live ? p.token_scale[static_cast<long long>(r) * s.tokens + t] : 1.0f;
#pragma unroll 1
    for (int h = 0; h < p.group; ++h) {
      float q[kPer];
#pragma unroll
      for (int e = 0; e < kPer; ++e) q[e] = q_s[h][lane + 32 * e];
      // The constant terms start the accumulators: sum_c q_c c_c per half.
      float k_lo = 0.0f, k_hi = 0.0f;
#pragma unroll
      for (int e = 0; e < kPer; ++e) k_lo += q[e] * terms[0][e].c, k_hi += q[e] * terms[1][e].c;
      float acc[32];
#pragma unroll
      for (int j = 0; j < 32; ++j) acc[j] = j < 16 ? k_lo : k_hi;
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        const float lo = q[e] * terms[0][e].a, hi = q[e] * terms[1][e].a;
#pragma unroll
        for (int j = 0; j < 32; ++j) acc[j] += (j < 16 ? lo : hi) * slices::unit_code<Bits, 32>(w[e], j);
      }
      const float score = transpose_sum(acc, lane);
      if (lane < live) p.scores[(static_cast<long long>(r) * p.group + h) * s.tokens + t] = p.token_scale ? score * sigma : score;
    }
  }
}

template <int Bits, int D>
cudaError_t launch(const ScoresParams& p, cudaStream_t stream) {
  const auto kernel = scores_token<Bits, D>;
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kWarps * 32, 0, info));
  // One wave of resident blocks over all regions, each a whole number of warp rounds of tiles.
  const int tiles = (p.keys.shape.tokens + 31) / 32, want = info.wave_per_region(p.keys.regions);
  const int per_block = std::max(kWarps, (tiles + want * kWarps - 1) / (want * kWarps) * kWarps);
  const dim3 grid(static_cast<unsigned>((tiles + per_block - 1) / per_block), static_cast<unsigned>(p.keys.regions));
  return launch_kernel(kernel, grid, dim3(kWarps * 32), 0, stream, p, per_block);
}

}  // namespace

bool scores_outer_supported(const RegionShape& s, int group) {
  return bits_built(s.bits) && head_dim_built(s.head_dim) && group_size_built(s.group_size) && heads_built(group) && group <= kMaxHeads &&
         !s.channel_axis && s.tokens >= 0 && s.tokens % s.group_size == 0;
}

cudaError_t scores_outer(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  if (!scores_outer_supported(s, p.group) || p.keys.regions < 1) return cudaErrorInvalidValue;
  if (s.tokens == 0) return cudaSuccess;
  if (p.kernel != GemvKernel::cuda_cores && scores_outer_mma_supported(p.keys, p.group)) return scores_outer_mma(p, stream);  // else CUDA cores
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, return launch<B, D>(p, stream);))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
