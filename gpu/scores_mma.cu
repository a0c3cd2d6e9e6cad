// q . K^T over channel-axis keys on the tensor cores, with lane-owned chunks (gpu/mantissa_pairs.cuh): a
// warp takes 32 tokens at a time (one hybrid zero-block, two m16n8k16 row tiles), lane t of each quad
// loads only its own chunk of its 4 rows straight from global memory, and the scale of the chunk's
// group multiplies the lane's accumulator. Codes decode in place into fp16 mantissas
// (gpu/mantissa_pairs.cuh: one LOP3 per two codes), each warp builds its B once per run, and the
// group mode and metadata precision are template axes, so the loop carries no per-unit branch on them.
// The loads of the unit two ahead are issued before a unit is multiplied.
#include <algorithm>
#include <cstdint>

#include "core/packed.h"
#include "gpu/cuda_check.h"
#include "gpu/dispatch.cuh"
#include "gpu/launch.h"
#include "gpu/mantissa_pairs.cuh"
#include "gpu/meta.cuh"
#include "gpu/mma.cuh"
#include "gpu/scores_mma.h"

namespace kvq::gpu {
namespace {

constexpr int kThreads = 128;
constexpr int kUnit = 32;  // tokens per warp iteration: two 16-row tiles, one hybrid zero-block

// What a lane multiplies by, built by each warp on its own (no barrier) while its first units' loads
// are in flight. Lane (g, t) holds column g of B: unit g / 2's part g % 2 (hi or lo) over quad lane
// t's span, zero unless g / 2 == t.
template <int Bits, bool Half>
struct LaneSetup {
  static constexpr int kSteps = pairs::kPairs<Bits, Half> / 2;  // k-steps per row tile: 2 pairs per row each
  std::uint32_t b[kSteps][2];  // [step][pair of the step]: half2 over (code lo, code hi)
  float constant;              // sum over t's span of the B entries (hi + lo): A's 1s times B
  float qsum;                  // sum of the scaled q over t's span
  float inv_range;             // 1 / the power of two q was scaled by
};

template <int Bits, bool Half, int D>
__device__ __forceinline__ LaneSetup<Bits, Half> lane_setup(const float* q, int g, int t) {
  constexpr int kSpan = Half ? 16 : 32;
  LaneSetup<Bits, Half> out;
  float m = 0.0f;
#pragma unroll
  for (int k = 0; k < D / 32; ++k) m = fmaxf(m, fabsf(__ldg(q + (threadIdx.x & 31) + 32 * k)));
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  const float range = pairs::range_scale(m);
  out.inv_range = 1.0f / range;
  float v[kSpan];
#pragma unroll
  for (int c = 0; c < kSpan; c += 4) {
    const float4 x = __ldg(reinterpret_cast<const float4*>(q + kSpan * t + c));
    v[c] = x.x * range, v[c + 1] = x.y * range, v[c + 2] = x.z * range, v[c + 3] = x.w * range;
  }
  const int part = g & 1;
  const bool live = (g >> 1) == t;
  float mine = 0.0f, qsum = 0.0f;
#pragma unroll
  for (int i = 0; i < pairs::kPairs<Bits, Half>; ++i) {
    const pairs::Pair P = pairs::pair<Bits, Half>(i);
    const float w = P.weight();
    const __half lo = mma::split_part(v[P.lo] * w, part), hi = mma::split_part(v[P.hi] * w, part);  // exact products
    mine += __half2float(lo) + __half2float(hi);
    out.b[i / 2][i % 2] = live ? mma::pack_half2(lo, hi) : 0u;
    // Every code appears in one low-plane pair, so q's sum over the span comes from those.
    if (P.plane == 1) qsum += v[P.lo] + v[P.hi];
  }
  // The other part's sum sits on lane g ^ 1 of the same t: 4 lanes away.
  out.constant = mine + __shfl_xor_sync(0xffffffffu, mine, 4);
  out.qsum = qsum;
  return out;
}

// One unit's loads for the lane: its chunk of rows g, g+8, g+16, g+24, their scales and (asym) zeros.
template <int Bits, class Meta, GroupMode Mode>
struct UnitLoads {
  std::uint32_t w[4][Bits];
  Meta scale[4];
  Meta zero[4];
};

// Rows are 8 tokens apart: codes at a constant distance, metadata at 8 * (groups per token).
template <int Bits, int D, class Meta, GroupMode Mode>
__device__ __forceinline__ void load_unit(const std::uint32_t* codes, const Meta* scales, const Meta* zeros, int meta_row_stride, int live_rows,
                                          UnitLoads<Bits, Meta, Mode>& out) {
  constexpr int kRowWords = 8 * (D / 32) * Bits;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const bool live = i < live_rows;
    const std::uint32_t* src = codes + i * kRowWords;
    if constexpr (Bits == 2) {
      const uint2 v = live ? __ldg(reinterpret_cast<const uint2*>(src)) : make_uint2(0, 0);
      out.w[i][0] = v.x, out.w[i][1] = v.y;
    } else if constexpr (Bits == 4 || Bits == 8) {
#pragma unroll
      for (int k = 0; k < Bits; k += 4) {
        const uint4 v = live ? __ldg(reinterpret_cast<const uint4*>(src + k)) : make_uint4(0, 0, 0, 0);
        out.w[i][k] = v.x, out.w[i][k + 1] = v.y, out.w[i][k + 2] = v.z, out.w[i][k + 3] = v.w;
      }
    } else {
#pragma unroll
      for (int k = 0; k < Bits; ++k) out.w[i][k] = live ? __ldg(src + k) : 0u;
    }
    out.scale[i] = live ? __ldg(scales + i * meta_row_stride) : Meta(0);
    if constexpr (Mode == GroupMode::asym) out.zero[i] = live ? __ldg(zeros + i * meta_row_stride) : Meta(0);
  }
}

// Units [u0, u1) of region blockIdx.y; warp w takes units u0 + w, u0 + w + 4, ...
template <int Bits, int D, class Meta, GroupMode Mode>
__global__ void __launch_bounds__(kThreads, 4) scores_mma_kernel(ScoresParams p, int units_per_block, std::uint32_t ones) {
  constexpr bool kHalf = D == 64;
  constexpr int kSteps = LaneSetup<Bits, kHalf>::kSteps;
  const RegionShape s = p.keys.shape;
  const int r = blockIdx.y, G = s.group_size, per_row = D / G, tokens = s.tokens;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  constexpr int kSpan = kHalf ? 16 : 32;
  const int chunk = kHalf ? t >> 1 : t, parity = kHalf ? t & 1 : 0, grp = kSpan * t / G;

  const std::uint32_t* codes = p.keys.codes + static_cast<long long>(r) * s.code_stride();
  const Meta* scales = static_cast<const Meta*>(p.keys.scales) + static_cast<long long>(r) * s.group_stride();
  const Meta* zeros = static_cast<const Meta*>(p.keys.zeros) + (Mode == GroupMode::asym ? static_cast<long long>(r) * s.group_stride() : 0);
  float* out = p.scores + static_cast<long long>(r) * tokens;
  const float* token_scale = p.token_scale ? p.token_scale + static_cast<long long>(r) * tokens : nullptr;

  const int units = (tokens + kUnit - 1) / kUnit;
  const int u1 = min(units, (blockIdx.x + 1) * units_per_block);
  constexpr int kWarps = kThreads / 32;
  // The lane's row g of unit u: codes at codes + (32u + g) * D/32 * Bits + chunk * Bits.
  const int meta_row_stride = 8 * per_row;
  auto load = [&](int u, UnitLoads<Bits, Meta, Mode>& into) {
    const int tok0 = u * kUnit + g;
    const int meta = tok0 * per_row + grp;
    load_unit<Bits, D>(codes + (tok0 * (D / 32) + chunk) * Bits, scales + meta, zeros + meta, meta_row_stride, (tokens - tok0 + 7) >> 3, into);
  };
  int u = blockIdx.x * units_per_block + warp;
  // Load buffers taken in turn: the loads of the unit kAhead ahead go out before a unit's multiply,
  // so each warp keeps kAhead units in flight (one for 8-bit codes, whose buffers are 4x larger).
  constexpr int kAhead = Bits == 8 ? 1 : 2;
  UnitLoads<Bits, Meta, Mode> buf0, buf1, buf2;
  if (u < u1) load(u, buf0);
  if (kAhead == 2 && u + kWarps < u1) load(u + kWarps, buf1);
  const LaneSetup<Bits, kHalf> su = lane_setup<Bits, kHalf, D>(p.queries + static_cast<long long>(r) * D, g, t);
  // B goes to the warp's own slice of shared memory (read back per step): its registers would cost
  // the third load buffer or a resident block.
  __shared__ uint2 warp_b[kWarps][kSteps][32];
#pragma unroll
  for (int j = 0; j < kSteps; ++j) warp_b[warp][j][lane] = make_uint2(su.b[j][0], su.b[j][1]);
  __syncwarp();
  const auto b_base = static_cast<std::uint32_t>(__cvta_generic_to_shared(&warp_b[warp][0][lane]));
  const float offset = static_cast<float>(packed::sym_offset(Bits, s.twos));
  const float sym_constant = su.constant + offset * su.qsum;  // a symmetric group's zero point folded in
  // Hybrid: the leading lane of each group votes its group's mode; ballot bit 4g + leader orders a
  // unit's groups token-major, as the compact zero points are stored.
  const int lanes_per_group = G / kSpan;
  const int lead_bit = 4 * g + (t - t % lanes_per_group);
  const bool leader = t % lanes_per_group == 0;

  auto multiply = [&](int u, const UnitLoads<Bits, Meta, Mode>& cur) {
    const int t0 = u * kUnit;
    float scale[4], zero[4];
    bool asym[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      scale[i] = magnitude(cur.scale[i]);
      asym[i] = Mode == GroupMode::asym || (Mode == GroupMode::hybrid && sign_bit(cur.scale[i]));
      zero[i] = 0.0f;
      if constexpr (Mode == GroupMode::asym) zero[i] = plain(cur.zero[i]);
    }
    if constexpr (Mode == GroupMode::hybrid) {
      // Compact zero index: the block's base + asymmetric groups before (token, group) in the block.
      const Meta* hz = static_cast<const Meta*>(p.keys.zeros) + p.keys.zero_offset[r] + p.keys.zero_base[static_cast<long long>(r) * s.zero_block_stride() + u];
      int before = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const unsigned votes = __ballot_sync(0xffffffffu, leader && asym[i]);
        const int here = before + __popc(votes & ((1u << lead_bit) - 1u));
        before += __popc(votes);
        if (asym[i]) zero[i] = plain(__ldg(hz + here));
      }
    }

    float acc[2][4] = {};
    std::uint32_t sw[4][pairs::kWords<Bits, kHalf>];
#pragma unroll
    for (int i = 0; i < 4; ++i) pairs::span_words<Bits, kHalf>(cur.w[i], parity, sw[i]);
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      // A volatile load: ptxas would otherwise see a loop-invariant load and keep B in registers
      // across units again.
      std::uint32_t b0, b1;
      asm volatile("ld.volatile.shared.v2.u32 {%0, %1}, [%2];" : "=r"(b0), "=r"(b1) : "r"(b_base + 8u * (32u * j)));
#pragma unroll
      for (int tile = 0; tile < 2; ++tile) {
        const std::uint32_t a[4] = {pairs::decode<Bits, kHalf>(sw[2 * tile], 2 * j, ones), pairs::decode<Bits, kHalf>(sw[2 * tile + 1], 2 * j, ones),
                                    pairs::decode<Bits, kHalf>(sw[2 * tile], 2 * j + 1, ones),
                                    pairs::decode<Bits, kHalf>(sw[2 * tile + 1], 2 * j + 1, ones)};
        mma::mma(acc[tile], a, b0, b1);
      }
    }

    // Row i (token t0 + g + 8i): |s| * (dot - constant) + zero * qsum over this lane's span.
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float dot = acc[i >> 1][2 * (i & 1)] + acc[i >> 1][2 * (i & 1) + 1];
      v[i] = asym[i] ? scale[i] * (dot - su.constant) + zero[i] * su.qsum : scale[i] * (dot - sym_constant);
    }
    // Sum the quad's 4 spans and leave row t on lane t: two exchange rounds, 3 shuffles.
    const bool upper = t & 2;
    const float send0 = upper ? v[0] : v[2], send1 = upper ? v[1] : v[3];
    const float keep0 = (upper ? v[2] : v[0]) + __shfl_xor_sync(0xffffffffu, send0, 2);
    const float keep1 = (upper ? v[3] : v[1]) + __shfl_xor_sync(0xffffffffu, send1, 2);
    const bool high = t & 1;
    float total = (high ? keep1 : keep0) + __shfl_xor_sync(0xffffffffu, high ? keep0 : keep1, 1);
    const int tok = t0 + g + 8 * t;
    if (tok < tokens) {
      total *= su.inv_range;
      // Token scales (rotation family) multiply the whole score back: s_t = sigma_t * (q' . x'_t).
      if (token_scale) total *= token_scale[tok];
      out[tok] = total;
    }
  };

  if constexpr (kAhead == 1) {
    while (u < u1) {
      if (u + kWarps < u1) load(u + kWarps, buf1);
      multiply(u, buf0);
      u += kWarps;
      if (u >= u1) break;
      if (u + kWarps < u1) load(u + kWarps, buf0);
      multiply(u, buf1);
      u += kWarps;
    }
  } else {
    while (u < u1) {
      if (u + 2 * kWarps < u1) load(u + 2 * kWarps, buf2);
      multiply(u, buf0);
      u += kWarps;
      if (u >= u1) break;
      if (u + 2 * kWarps < u1) load(u + 2 * kWarps, buf0);
      multiply(u, buf1);
      u += kWarps;
      if (u >= u1) break;
      if (u + 2 * kWarps < u1) load(u + 2 * kWarps, buf1);
      multiply(u, buf2);
      u += kWarps;
    }
  }
}

template <int Bits, int D, class Meta, GroupMode Mode>
cudaError_t launch(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  auto kernel = scores_mma_kernel<Bits, D, Meta, Mode>;
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kThreads, 0, info));
  // One wave of resident blocks, each taking a contiguous run of units (4 warps x several each), so
  // each warp builds its B once per run.
  const int units = (s.tokens + kUnit - 1) / kUnit;
  const int want = info.wave_per_region(p.keys.regions);
  const int per_block = std::max(kThreads / 32, (units + want - 1) / want);
  const dim3 grid(static_cast<unsigned>((units + per_block - 1) / per_block), static_cast<unsigned>(p.keys.regions));
  kernel<<<grid, kThreads, 0, stream>>>(p, per_block, pairs::kOnes);  // ones: see pairs::decode
  return cudaGetLastError();
}

template <int Bits, int D, class Meta>
cudaError_t by_mode(const ScoresParams& p, cudaStream_t stream) {
  switch (p.keys.shape.mode) {
    case GroupMode::sym: return launch<Bits, D, Meta, GroupMode::sym>(p, stream);
    case GroupMode::asym: return launch<Bits, D, Meta, GroupMode::asym>(p, stream);
    case GroupMode::hybrid: return launch<Bits, D, Meta, GroupMode::hybrid>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool scores_mma_supported(const RegionShape& s, int group) {
  // A lane's chunk (half a chunk at head_dim 64) must lie in one group.
  const bool groups = (s.group_size == 32 || s.group_size == 64 || s.group_size == 128) && s.group_size <= s.head_dim;
  // One query head per kv head: with GQA groups the per-head mmas made it slower than the staged
  // kernel (docs/PERF.md), so only group 1 is built.
  return bits_built(s.bits) && head_dim_built(s.head_dim) && groups && s.channel_axis && group == 1;
}

cudaError_t scores_mma(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  if (!scores_mma_supported(s, p.group)) return cudaErrorInvalidValue;
  if (s.tokens == 0) return cudaSuccess;
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, {
    if (s.meta_fp16) return by_mode<B, D, std::uint16_t>(p, stream);
    return by_mode<B, D, std::uint32_t>(p, stream);
  }))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
