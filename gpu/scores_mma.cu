// q . K^T over channel-axis keys on the tensor cores, with lane-owned chunks (gpu/lane_chunks.cuh):
// a warp takes 32 tokens at a time (one hybrid zero-block), each lane loads only its own chunk of
// its 4 rows straight from global memory, and the scale of the chunk's group multiplies the lane's
// accumulator. q's B fragments are built once per block in shared memory. Memory-level parallelism
// comes from the resident warps, each loading its next 32-token unit while it multiplies this one.
#include <algorithm>

#include "core/packed.h"
#include "gpu/cuda_check.h"
#include "gpu/dispatch.cuh"
#include "gpu/lane_chunks.cuh"
#include "gpu/launch.h"
#include "gpu/meta.cuh"
#include "gpu/scores_mma.h"

namespace kvq::gpu {
namespace {

constexpr int kThreads = 128;
constexpr int kUnit = 32;  // tokens per warp iteration: two 16-row tiles, one hybrid zero-block

template <int Bits, int D, int Group>
struct ScoresShared {
  static constexpr bool kHalf = D == 64;
  static constexpr int kSteps = lanes::kSteps<Bits, kHalf>;
  uint2 b[Group][kSteps][32];  // B fragments per (head, step, lane); zero off the lane's unit column
  float q[Group][D];           // q times its range scale
  float range[Group];          // the power of two q was scaled by
  float unit_sum[Group][4];    // sum of scaled q over the group holding unit u's channels
};

// Channels of unit (lane) u: a whole chunk (head_dim 128), or half of chunk u / 2 (head_dim 64).
template <int D>
__device__ __forceinline__ int unit_chunk(int u) {
  return D == 64 ? u >> 1 : u;
}

template <int Bits, int D, int Group>
__device__ void prepare_query(const float* q, int group_size, ScoresShared<Bits, D, Group>& sh) {
  using Sh = ScoresShared<Bits, D, Group>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < Group * D; i += kThreads) sh.q[i / D][i % D] = q[i];
  __syncthreads();
  for (int h = warp; h < Group; h += kThreads / 32) {
    float m = 0.0f;
    for (int c = lane; c < D; c += 32) m = fmaxf(m, fabsf(sh.q[h][c]));
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (lane == 0) sh.range[h] = mma::fp16_range_scale(m);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < Group * D; i += kThreads) sh.q[i / D][i % D] *= sh.range[i / D];
  __syncthreads();
  if (threadIdx.x < Group * 4) {
    const int h = threadIdx.x / 4, first = 32 * unit_chunk<D>(threadIdx.x % 4), g0 = first - first % group_size;
    float sum = 0.0f;
    for (int c = g0; c < g0 + group_size; ++c) sum += sh.q[h][c];
    sh.unit_sum[h][threadIdx.x % 4] = sum;
  }
  for (int i = threadIdx.x; i < Group * Sh::kSteps * 32; i += kThreads) {
    const int l = i % 32, j = (i / 32) % Sh::kSteps, h = i / (32 * Sh::kSteps);
    const int u = l & 3;
    const bool live = (l >> 3) == u;  // column g = l >> 2 belongs to unit g >> 1
    sh.b[h][j][l] = live ? lanes::b_entry<Bits, Sh::kHalf>(sh.q[h] + 32 * unit_chunk<D>(u), j, u & 1, (l >> 2) & 1) : make_uint2(0, 0);
  }
  __syncthreads();
}

// Units [u0, u1) of region blockIdx.y; warp w takes units u0 + w, u0 + w + 4, ...
template <int Bits, int D, int Group>
__global__ void __launch_bounds__(kThreads, Group == 1 ? 5 : 4) scores_mma_kernel(ScoresParams p, int units_per_block) {
  using Sh = ScoresShared<Bits, D, Group>;
  constexpr bool kHalf = Sh::kHalf;
  __shared__ Sh sh;
  const RegionShape s = p.keys.shape;
  const int r = blockIdx.y, G = s.group_size, per_row = D / G;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int chunk = unit_chunk<D>(t), parity = kHalf ? t & 1 : 0, first = 32 * chunk, grp = first / G;
  // One lane per group adds the group's constant terms (zero point, and the decode's plane constant).
  const bool leader = parity == 0 && first % G == 0;
  const float offset = static_cast<float>(packed::sym_offset(Bits, s.twos));
  const long long groups0 = static_cast<long long>(r) * s.group_stride();
  const std::uint32_t* codes = p.keys.codes + static_cast<long long>(r) * s.code_stride();
  const int units = (s.tokens + kUnit - 1) / kUnit;
  const int u1 = min(units, (blockIdx.x + 1) * units_per_block);

  // Unit u's codes, scales, zero points (asym) and, for hybrid, the lane's token's group signs,
  // loaded one unit ahead so they are in flight while the previous unit is multiplied.
  std::uint32_t w[4][Bits], next[4][Bits];
  float scale[4], zero[4], next_scale[4], next_zero[4];
  bool asym[4], next_asym[4];
  unsigned mask = 0, next_mask = 0;
  auto load = [&](int u) {
    const int t0 = u * kUnit;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int tok = min(t0 + g + 8 * i, s.tokens - 1);  // past the end: a live row, not written
      const std::uint32_t* src = codes + (static_cast<long long>(tok) * (D / 32) + chunk) * Bits;
#pragma unroll
      for (int k = 0; k < Bits; ++k) next[i][k] = __ldg(src + k);
      bool sign;
      const long long gi = groups0 + static_cast<long long>(tok) * per_row + grp;
      next_scale[i] = meta_value(p.keys.scales, gi, s.meta_fp16, sign);
      next_asym[i] = s.mode == GroupMode::asym || (s.mode == GroupMode::hybrid && sign);
      next_zero[i] = s.mode == GroupMode::asym ? zero_value(p.keys.zeros, gi, s.meta_fp16) : -offset * next_scale[i];
    }
    next_mask = 0;
    if (s.mode == GroupMode::hybrid && t0 + lane < s.tokens)
      for (int k = 0; k < per_row; ++k) {
        bool sign;
        meta_value(p.keys.scales, groups0 + static_cast<long long>(t0 + lane) * per_row + k, s.meta_fp16, sign);
        next_mask |= static_cast<unsigned>(sign) << k;
      }
  };
  int u = blockIdx.x * units_per_block + warp;
  if (u < u1) load(u);  // in flight while q's side is prepared
  prepare_query<Bits, D, Group>(p.queries + static_cast<long long>(r) * Group * D, G, sh);
  float usum[Group], inv_range[Group];
#pragma unroll
  for (int h = 0; h < Group; ++h) usum[h] = leader ? sh.unit_sum[h][t] : 0.0f, inv_range[h] = 1.0f / sh.range[h];
  for (; u < u1; u += kThreads / 32) {
    const int t0 = u * kUnit;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int k = 0; k < Bits; ++k) w[i][k] = next[i][k];
      if constexpr (kHalf) lanes::half_view<Bits>(w[i], parity);
      scale[i] = next_scale[i], zero[i] = next_zero[i], asym[i] = next_asym[i];
    }
    mask = next_mask;
    if (u + kThreads / 32 < u1) load(u + kThreads / 32);
    if (s.mode == GroupMode::hybrid) {
      // Compact zero index: zero_base of the block + asymmetric groups before (token, group) in it.
      int before = __popc(mask);
      for (int k = 1; k < 32; k <<= 1) {
        const int up = __shfl_up_sync(0xffffffffu, before, k);
        if (lane >= k) before += up;
      }
      before -= __popc(mask);
      const long long base = p.keys.zero_offset[r] + p.keys.zero_base[static_cast<long long>(r) * s.zero_block_stride() + u];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row_before = __shfl_sync(0xffffffffu, before, g + 8 * i);
        const unsigned row_mask = __shfl_sync(0xffffffffu, mask, g + 8 * i);
        if (asym[i]) zero[i] = zero_value(p.keys.zeros, base + row_before + __popc(row_mask & ((1u << grp) - 1u)), s.meta_fp16);
      }
    }
#pragma unroll
    for (int tile = 0; tile < 2; ++tile) {
      float c[Group][4] = {};
#pragma unroll
      for (int j = 0; j < Sh::kSteps; ++j) {
        std::uint32_t a[4];
        lanes::a_fragment<Bits, kHalf>(w[2 * tile], w[2 * tile + 1], j, a);
#pragma unroll
        for (int h = 0; h < Group; ++h) {
          const uint2 b = sh.b[h][j][lane];
          mma::mma(c[h], a, b.x, b.y);
        }
      }
#pragma unroll
      for (int h = 0; h < Group; ++h)
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const int i = 2 * tile + k, tok = t0 + 16 * tile + g + 8 * k;
          // |s| * (dot - plane constant * sum q) + zero * sum q, the constants once per group.
          float v = scale[i] * (c[h][2 * k] + c[h][2 * k + 1]) + (zero[i] - scale[i] * mma::kPlaneConstant<Bits>) * usum[h];
          v += __shfl_xor_sync(0xffffffffu, v, 1);
          v += __shfl_xor_sync(0xffffffffu, v, 2);
          if (t == ((2 * h + k) & 3) && tok < s.tokens) {
            v *= inv_range[h];
            // Token scales (rotation family) multiply the whole score back: s_t = sigma_t * (q' . x'_t).
            if (p.token_scale) v *= p.token_scale[static_cast<long long>(r) * s.tokens + tok];
            p.scores[(static_cast<long long>(r) * Group + h) * s.tokens + tok] = v;
          }
        }
    }
  }
}

template <int Bits, int D, int Group>
cudaError_t launch(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  auto kernel = scores_mma_kernel<Bits, D, Group>;
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kThreads, 0, info));
  // One wave of resident blocks, each taking a contiguous run of units (4 warps x several each), so
  // the per-block set-up of q is paid once per resident block.
  const int units = (s.tokens + kUnit - 1) / kUnit;
  const int want = info.wave_per_region(p.keys.regions);
  const int per_block = std::max(kThreads / 32, (units + want - 1) / want);
  const dim3 grid(static_cast<unsigned>((units + per_block - 1) / per_block), static_cast<unsigned>(p.keys.regions));
  kernel<<<grid, kThreads, 0, stream>>>(p, per_block);
  return cudaGetLastError();
}

}  // namespace

bool scores_mma_supported(const RegionShape& s, int group) {
  // A lane's chunk (half a chunk at head_dim 64) must lie in one group.
  const bool groups = (s.group_size == 32 || s.group_size == 64 || s.group_size == 128) && s.group_size <= s.head_dim;
  // One query head per kv head: with GQA groups the per-head mmas and register spills made it slower
  // than the staged kernel (docs/PERF.md), so only group 1 is built.
  return bits_built(s.bits) && head_dim_built(s.head_dim) && groups && s.channel_axis && group == 1;
}

cudaError_t scores_mma(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  if (!scores_mma_supported(s, p.group)) return cudaErrorInvalidValue;
  if (s.tokens == 0) return cudaSuccess;
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, return launch<B, D, 1>(p, stream);))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
