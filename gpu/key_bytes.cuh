#pragma once
// Lane-owned q . K^T over channel-axis keys on int8 tensor cores (head_dim 128): the layout of
// gpu/key_units.cuh (lane t of each quad loads its own 32-code chunk t of rows g, g+8, g+16, g+24)
// with the A and B of gpu/byte_planes.cuh instead of fp16 mantissas. Codes become exact u8 at the
// top of their bytes (a_word_high: one AND and at most one shift per four codes, two of each for the
// split 3-bit ones; the shifts mostly left ones, on the FMA pipe; the power of two this leaves is
// folded into q's range), and q is 16-bit
// fixed point per chunk (relative to the chunk's largest |q|), split into s8 hi and lo bytes in B's
// columns 2t, 2t+1 (zero outside lane t's k-slots): each lane's s32 accumulator pair is its own
// chunk's exact dot product, which lies in one group. m16n8k32 covers twice the reduction of
// m16n8k16, so a unit takes half the mmas and half the B loads of the fp16 form, and each code is
// decoded once with no constant to take back (docs/PERF.md).
#include <cstdint>
#include <type_traits>

#include "gpu/byte_planes.cuh"
#include "gpu/key_units.cuh"

namespace kvq::gpu::key_units {

// The code (within its chunk) in byte i of A register (mma s, half r): the one whose B byte sits at slot
// 8s + 4r + i (planes::slot, gpu/byte_planes.cuh's table read the other way). s, r and i are constants
// once unrolled, so the search folds away.
template <int Bits>
__host__ __device__ constexpr int code_at(int s, int r, int i) {
  int code = 0;
  for (int c = 0; c < 32; ++c)
    if (planes::slot<Bits>(c) == 8 * s + 4 * r + i) code = c;
  return code;
}

// Every slot holds one code, so code_at is defined everywhere.
template <int Bits>
constexpr bool slots_cover_chunk() {
  unsigned long long seen = 0;
  for (int c = 0; c < 32; ++c) seen |= 1ull << planes::slot<Bits>(c);
  return seen == 0xffffffffull;
}
static_assert(slots_cover_chunk<2>() && slots_cover_chunk<3>() && slots_cover_chunk<4>() && slots_cover_chunk<8>(), "planes::slot is a permutation");

// KeyUnits' layout, loads and hybrid zero points, with its own B and product. Of KeyUnits' members
// it sets b_base (the lane's B fragment of mma 0), inv_range (chunk t's fixed point back to q's scale)
// and qsum (chunk t's sum of the fixed-point q); constant and sym_constant are unused.
template <int Bits, int D, class Meta, GroupMode Mode>
struct KeyBytes : KeyUnits<Bits, D, Meta, Mode> {
  static_assert(D == 128, "lane t owns chunk t of each row: head_dim 128");
  using Base = KeyUnits<Bits, D, Meta, Mode>;
  using Loads = typename Base::Loads;
  static constexpr int kMmas = planes::kMmas;
  using BlockB = uint2[kMmas][32];  // [mma][lane]: the B fragments the block's warps share
  using QueryShares = int;          // unused: each warp takes its chunk's range and sum itself

  int q_offset;  // symmetric groups: the code offset times qsum, in integers

  // B from q (the warp's copy_query copy, landed) into shared memory, built by the block's 4 warps
  // together: warp `warp` (0-3) writes a quarter of the mmas, then a block barrier. Every thread of
  // the block must call it.
  __device__ __forceinline__ void set_block_query(const float* q, int warp, const DeviceRegions& keys, BlockB& b, QueryShares&) {
    const int t = this->t, g = this->g, lane = threadIdx.x & 31;
    float v[32];
    float m = 0.0f;
#pragma unroll
    for (int c = 0; c < 32; c += 4) {
      const float4 x = *reinterpret_cast<const float4*>(q + 32 * t + c);
      v[c] = x.x, v[c + 1] = x.y, v[c + 2] = x.z, v[c + 3] = x.w;
      m = fmaxf(m, fmaxf(fmaxf(fabsf(x.x), fabsf(x.y)), fmaxf(fabsf(x.z), fabsf(x.w))));
    }
    const float range = planes::fixed_range(m, this->inv_range);
    int x[32];
    int sum = 0;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      x[c] = planes::to_fixed(v[c], range);
      sum += x[c];
    }
    // Lane (g, t) holds column g of B over lane t's k-slots: chunk t's part g % 2 where g / 2 == t.
    const bool live = (g >> 1) == t;
    const int part = g & 1;
    constexpr int kQuarter = kMmas / 4;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k != warp) continue;
#pragma unroll
      for (int s = k * kQuarter; s < (k + 1) * kQuarter; ++s) {
        std::uint32_t word[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          word[r] = 0;
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            std::uint8_t hi, lo;
            planes::split_fixed(x[code_at<Bits>(s, r, i)], hi, lo);
            word[r] |= static_cast<std::uint32_t>(part ? lo : hi) << (8 * i);
          }
        }
        b[s][lane] = live ? make_uint2(word[0], word[1]) : make_uint2(0u, 0u);
      }
    }
    // The products come scaled by kHighScale (a_word_high): so do qsum and q_offset, and inv_range
    // takes it back.
    constexpr int kHigh = planes::kHighScale<Bits>;
    this->qsum = static_cast<float>(sum * kHigh);
    this->inv_range *= 1.0f / kHigh;
    q_offset = packed::sym_offset(Bits, keys.shape.twos) * sum * kHigh;
    this->b_base = static_cast<std::uint32_t>(__cvta_generic_to_shared(&b[0][lane]));
    __syncthreads();
  }

  // q . k of token 32u + g + 8t (before token scales): the quad's 4 chunks summed onto lane t. Every
  // lane of the warp must call it (shuffles); the value means something where the token exists.
  __device__ __forceinline__ float score(int u, const Loads& cur, std::uint32_t) const {
    float scale[4], zero[4];
    bool asym[4];
    this->group_meta(u, cur, scale, zero, asym);

    int acc[2][4] = {};
#pragma unroll
    for (int s = 0; s < kMmas; ++s) {
      std::uint32_t b0, b1;
      this->block_b(s, b0, b1);
#pragma unroll
      for (int tile = 0; tile < 2; ++tile) {
        const std::uint32_t a[4] = {planes::a_word_high<Bits>(cur.w[2 * tile], s, 0), planes::a_word_high<Bits>(cur.w[2 * tile + 1], s, 0),
                                    planes::a_word_high<Bits>(cur.w[2 * tile], s, 1), planes::a_word_high<Bits>(cur.w[2 * tile + 1], s, 1)};
        planes::imma(acc[tile], a, b0, b1);
      }
    }

    // Row i (token 32u + g + 8i): the chunk's term in q's scale.
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int dot = 256 * acc[i >> 1][2 * (i & 1)] + acc[i >> 1][2 * (i & 1) + 1];
      v[i] = asym[i] ? (scale[i] * static_cast<float>(dot) + zero[i] * this->qsum) * this->inv_range
                     : static_cast<float>(dot - q_offset) * (scale[i] * this->inv_range);
    }
    return this->quad_rows(v);
  }
};

// The lane-owned keys the GEMV (gpu/scores_mma.cu) and the fused attention (gpu/attention_lane.cuh)
// take: int8 tensor cores where a lane owns whole chunks (head_dim 128), fp16 mantissa pairs where it
// owns half chunks (head_dim 64, whose byte layout is not written).
template <int Bits, int D, class Meta, GroupMode Mode>
using LaneKeys = std::conditional_t<D == 128, KeyBytes<Bits, D, Meta, Mode>, KeyUnits<Bits, D, Meta, Mode>>;

}  // namespace kvq::gpu::key_units
