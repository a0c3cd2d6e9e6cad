#pragma once
// A warp's lane-owned q . K^T over channel-axis keys, one unit of 32 tokens (two m16n8k16 row tiles,
// one hybrid zero-block) at a time: what scores_mma.cu streams over a region and the fused attention
// (gpu/attention_lane.cuh) takes four units per stretch of. Lane t of each quad loads only its own
// chunk of its 4 rows straight from global memory (gpu/mantissa_pairs.cuh), the codes decode in place
// into fp16 mantissas, and the scale of the chunk's group multiplies the lane's accumulator. The group
// mode and metadata precision are template axes, so the loop carries no per-unit branch on them.
// At head_dim 128 the kernels take KeyBytes (gpu/key_bytes.cuh): these loads with an int8 product.
#include <cstdint>

#include "core/packed.h"
#include "gpu/mantissa_pairs.cuh"
#include "gpu/meta.cuh"
#include "gpu/mma.cuh"
#include "gpu/pipeline.cuh"
#include "gpu/region.h"
#include "gpu/region_arrays.cuh"

namespace kvq::gpu::key_units {

constexpr int kUnit = 32;  // tokens per unit

// What a lane multiplies by, the same for every warp of a region. Lane (g, t) holds column g
// of B: unit g / 2's part g % 2 (hi or lo) over quad lane t's span, zero unless g / 2 == t.
template <int Bits, bool Half>
struct LaneSetup {
  static constexpr int kSteps = pairs::kPairs<Bits, Half> / 2;  // k-steps per row tile: 2 pairs per row each
  std::uint32_t b[kSteps][2];  // [step][pair of the step]: half2 over (code lo, code hi)
  float constant;              // sum over t's span of the B entries (hi + lo): A's 1s times B
  float qsum;                  // sum of the scaled q over t's span
  float inv_range;             // 1 / the power of two q was scaled by
};

// q ([D] fp32, device, 16-byte aligned) into the warp's own copy in shared memory, as one cp.async
// group of the warp's. The kernels issue it before a run's first unit loads, so that q lands first
// and the block's B is built while the units are still in flight; loaded after them, q waited behind
// them (H100, paper keys: 9.54 -> 8.2 us at N = 8192, 26.3 -> 25.3 at 32768; docs/PERF.md).
// Call it after wait_for_prior_kernels: q may be the previous kernel's output (the key-normalized
// query). set_block_query reads the copy once the caller has waited for the group (copy_wait) and
// synced the warp.
template <int D>
__device__ __forceinline__ void copy_query(const float* q, float (&copy)[D]) {
  static_assert(D % 4 == 0, "cp.async moves 16-byte pieces");
  const int lane = threadIdx.x & 31;
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(&copy[0]));
#pragma unroll
  for (int i = lane; i < D / 4; i += 32) copy16(dst + 16 * i, q + 4 * i);
  copy_commit();
}

// Pairs [I0, I1) of the lane's B (the b entries of their steps) and their shares of the constant and
// of q's sum; q: the warp's copy (copy_query).
template <int Bits, bool Half, int D, int I0, int I1>
__device__ __forceinline__ LaneSetup<Bits, Half> lane_setup(const float* q, int g, int t) {
  constexpr int kSpan = Half ? 16 : 32;
  LaneSetup<Bits, Half> out;
  float m = 0.0f;
#pragma unroll
  for (int k = 0; k < D / 32; ++k) m = fmaxf(m, fabsf(q[(threadIdx.x & 31) + 32 * k]));
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  const float range = pairs::range_scale(m);
  out.inv_range = 1.0f / range;
  float v[kSpan];
#pragma unroll
  for (int c = 0; c < kSpan; c += 4) {
    const float4 x = *reinterpret_cast<const float4*>(q + kSpan * t + c);
    v[c] = x.x * range, v[c + 1] = x.y * range, v[c + 2] = x.z * range, v[c + 3] = x.w * range;
  }
  const int part = g & 1;
  const bool live = (g >> 1) == t;
  float mine = 0.0f, qsum = 0.0f;
#pragma unroll
  for (int i = I0; i < I1; ++i) {
    const pairs::Pair P = pairs::pair<Bits, Half>(i);
    const float w = P.weight();
    const __half lo = mma::split_part(v[P.lo] * w, part), hi = mma::split_part(v[P.hi] * w, part);  // exact products
    mine += __half2float(lo) + __half2float(hi);
    out.b[i / 2][i % 2] = live ? mma::pack_half2(lo, hi) : 0u;
    // Every code appears in one pair of weight 1, so q's sum over the span comes from those.
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

// One region's keys as a warp sees them. Per warp: init, set_block_query (the block's B in shared
// memory), then load and score any units in any order.
template <int Bits, int D, class Meta, GroupMode Mode>
struct KeyUnits {
  static constexpr bool kHalf = D == 64;
  static constexpr int kSteps = LaneSetup<Bits, kHalf>::kSteps;
  static constexpr int kSpan = kHalf ? 16 : 32;
  using Loads = UnitLoads<Bits, Meta, Mode>;
  using BlockB = uint2[kSteps][32];  // [step][lane]: the B fragments the block's warps share

  const std::uint32_t* codes;
  const Meta* scales;
  const Meta* zeros;                // asym: every group; hybrid: the region's compact zero points
  const std::uint32_t* zero_base;   // hybrid: the region's per-unit bases
  int tokens, per_row, g, t, chunk, parity, grp, lead_bit;
  bool leader;
  std::uint32_t b_base;  // shared address of the lane's B fragment of step 0
  float constant, sym_constant, qsum, inv_range;

  __device__ __forceinline__ void init(const DeviceRegions& keys, int r) {
    const RegionShape& s = keys.shape;
    const int lane = threadIdx.x & 31;
    g = lane >> 2, t = lane & 3;
    tokens = s.tokens, per_row = D / s.group_size;
    chunk = kHalf ? t >> 1 : t, parity = kHalf ? t & 1 : 0, grp = kSpan * t / s.group_size;
    const RegionArrays<Meta> a = region_arrays<Meta>(keys, r);
    codes = a.codes, scales = a.scales, zeros = a.zeros, zero_base = a.zero_base;
    // Hybrid: the leading lane of each group votes its group's mode; ballot bit 4g + leader orders a
    // unit's groups token-major, as the compact zero points are stored.
    const int lanes_per_group = s.group_size / kSpan;
    lead_bit = 4 * g + (t - t % lanes_per_group);
    leader = t % lanes_per_group == 0;
  }

  // The lane's rows of unit u, the first live_rows of them (the others zero): row g at codes + (32u +
  // g) * D/32 * Bits + chunk * Bits.
  __device__ __forceinline__ void load_rows(int u, int live_rows, Loads& into) const {
    const int tok0 = u * kUnit + g;
    const int meta = tok0 * per_row + grp;
    load_unit<Bits, D>(codes + (tok0 * (D / 32) + chunk) * Bits, scales + meta, zeros + meta, 8 * per_row, live_rows, into);
  }

  // Unit u, checking each row against the region's length.
  __device__ __forceinline__ void load(int u, Loads& into) const { load_rows(u, (tokens - (u * kUnit + g) + 7) >> 3, into); }

  // The same loads, where only a region's last unit can be partial: a whole one (a test uniform over
  // the warp) loads without a check per row, some 35 instructions fewer. Two copies of the loads: the
  // fused attention, with less room for them, keeps `load`.
  __device__ __forceinline__ void load_split(int u, Loads& into) const {
    if (u < tokens / kUnit) load_rows(u, 4, into);
    else load(u, into);
  }

  // B from q (the warp's copy_query copy, landed) into shared memory, built by the block's 4 warps
  // together (B depends only on q and the lane): each warp's quarter (set_query_part; `warp` is the
  // warp's index in the block, 0-3), a block barrier, then every warp sums the shares (gather_query).
  // Every thread of the block must call it; `keys` are those given to init. Their sym convention is
  // read after the barrier: taken as a bool argument before it, its load moved and the fused
  // attention's code changed.
  using QueryShares = float2[4][32];
  __device__ __forceinline__ void set_block_query(const float* q, int warp, const DeviceRegions& keys, BlockB& b, QueryShares& shares) {
    set_query_part(q, warp, b, shares);
    __syncthreads();
    gather_query(keys.shape.twos, b, shares);
  }

  // Warp `part` (0-3) puts its quarter of the pairs into their steps of b and the lane's shares of the
  // constant and of q's sum into shares[part][lane].
  __device__ __forceinline__ void set_query_part(const float* q, int part, BlockB& b, QueryShares& shares) {
    switch (part) {
      case 0: query_part<0>(q, b, shares); break;
      case 1: query_part<1>(q, b, shares); break;
      case 2: query_part<2>(q, b, shares); break;
      default: query_part<3>(q, b, shares); break;
    }
  }
  // set_query_part's quarter Part.
  template <int Part>
  __device__ __forceinline__ void query_part(const float* q, BlockB& b, QueryShares& shares) {
    static_assert(pairs::kPairs<Bits, kHalf> == 2 * kSteps && kSteps % 4 == 0, "each quarter is a whole number of steps");
    constexpr int kQuarter = pairs::kPairs<Bits, kHalf> / 4;
    const LaneSetup<Bits, kHalf> su = lane_setup<Bits, kHalf, D, Part * kQuarter, (Part + 1) * kQuarter>(q, g, t);
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = Part * kSteps / 4; j < (Part + 1) * kSteps / 4; ++j) b[j][lane] = make_uint2(su.b[j][0], su.b[j][1]);
    shares[Part][lane] = make_float2(su.constant, su.qsum);
    inv_range = su.inv_range;  // every warp takes q's range itself
  }

  // After the barrier: the block's B and the 4 shares of this lane's constant and q sum.
  __device__ __forceinline__ void gather_query(bool twos, const BlockB& b, const QueryShares& shares) {
    const int lane = threadIdx.x & 31;
    float c = 0.0f, s = 0.0f;
#pragma unroll
    for (int part = 0; part < 4; ++part) c += shares[part][lane].x, s += shares[part][lane].y;
    b_base = static_cast<std::uint32_t>(__cvta_generic_to_shared(&b[0][lane]));
    constant = c, qsum = s;
    sym_constant = c + static_cast<float>(packed::sym_offset(Bits, twos)) * s;
  }

  // The lane's 4 rows of unit u: each group's |scale|, whether it is asymmetric, and its zero point
  // (asym groups; a hybrid unit's through its compact zero points: a ballot and a load). Every lane
  // of the warp must call it for hybrid keys (ballots).
  __device__ __forceinline__ void group_meta(int u, const Loads& cur, float (&scale)[4], float (&zero)[4], bool (&asym)[4]) const {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      scale[i] = magnitude(cur.scale[i]);
      asym[i] = Mode == GroupMode::asym || (Mode == GroupMode::hybrid && sign_bit(cur.scale[i]));
      zero[i] = 0.0f;
      if constexpr (Mode == GroupMode::asym) zero[i] = plain(cur.zero[i]);
    }
    if constexpr (Mode == GroupMode::hybrid) {
      // Compact zero index: the unit's base + asymmetric groups before (token, group) in the unit.
      const Meta* hz = zeros + zero_base[u];
      int before = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const unsigned votes = __ballot_sync(0xffffffffu, leader && asym[i]);
        const int here = before + __popc(votes & ((1u << lead_bit) - 1u));
        before += __popc(votes);
        if (asym[i]) zero[i] = plain(__ldg(hz + here));
      }
    }
  }

  // q . k of token 32u + g + 8t (before token scales): the quad's 4 spans summed onto lane t. Every
  // lane of the warp must call it (shuffles); the value means something where the token exists.
  __device__ __forceinline__ float score(int u, const Loads& cur, std::uint32_t ones) const {
    float scale[4], zero[4];
    bool asym[4];
    group_meta(u, cur, scale, zero, asym);

    float acc[2][4] = {};
    std::uint32_t sw[4][pairs::kWords<Bits, kHalf>];
#pragma unroll
    for (int i = 0; i < 4; ++i) pairs::span_words<Bits, kHalf>(cur.w[i], parity, sw[i]);
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      std::uint32_t b0, b1;
      block_b(j, b0, b1);
#pragma unroll
      for (int tile = 0; tile < 2; ++tile) {
        const std::uint32_t a[4] = {pairs::decode<Bits, kHalf>(sw[2 * tile], 2 * j, ones), pairs::decode<Bits, kHalf>(sw[2 * tile + 1], 2 * j, ones),
                                    pairs::decode<Bits, kHalf>(sw[2 * tile], 2 * j + 1, ones),
                                    pairs::decode<Bits, kHalf>(sw[2 * tile + 1], 2 * j + 1, ones)};
        mma::mma(acc[tile], a, b0, b1);
      }
    }

    // Row i (token 32u + g + 8i): |s| * (dot - constant) + zero * qsum over this lane's span.
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float dot = acc[i >> 1][2 * (i & 1)] + acc[i >> 1][2 * (i & 1) + 1];
      v[i] = asym[i] ? scale[i] * (dot - constant) + zero[i] * qsum : scale[i] * (dot - sym_constant);
    }
    return quad_rows(v) * inv_range;
  }

  // The lane's B fragment of k-step j, from the block's B in shared memory (b_base). A volatile load:
  // ptxas would otherwise see a loop-invariant load and keep B in registers across units again.
  __device__ __forceinline__ void block_b(int j, std::uint32_t& b0, std::uint32_t& b1) const {
    asm volatile("ld.volatile.shared.v2.u32 {%0, %1}, [%2];" : "=r"(b0), "=r"(b1) : "r"(b_base + 8u * (32u * j)));
  }

  // The lane's terms of rows g, g+8, g+16, g+24 summed over the quad's 4 spans, row t left on lane t:
  // two exchange rounds, 3 shuffles. Every lane of the warp must call it.
  __device__ __forceinline__ float quad_rows(const float (&v)[4]) const {
    const bool upper = t & 2;
    const float send0 = upper ? v[0] : v[2], send1 = upper ? v[1] : v[3];
    const float keep0 = (upper ? v[2] : v[0]) + __shfl_xor_sync(0xffffffffu, send0, 2);
    const float keep1 = (upper ? v[3] : v[1]) + __shfl_xor_sync(0xffffffffu, send1, 2);
    const bool high = t & 1;
    return (high ? keep1 : keep0) + __shfl_xor_sync(0xffffffffu, high ? keep0 : keep1, 1);
  }
};

}  // namespace kvq::gpu::key_units
