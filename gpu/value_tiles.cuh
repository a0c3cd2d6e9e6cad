#pragma once
// A warp's lane-owned p . V^ over token-axis values, one stretch of 128 tokens at a time: the values
// half of the fused attention (gpu/attention_lane.cuh). Lane t of each quad owns the stretch's tile t
// (32 tokens, one 32-code chunk per channel) on int8 tensor cores (gpu/byte_planes.cuh): codes are
// exact u8 with no offset, the probabilities signed 16-bit fixed point (hi and lo s8 bytes in B's
// columns 2t, 2t+1, zero outside lane t's k-slots), so each lane's accumulator pair is its own tile's
// exact integer dot product, which lies in one group: the group's scale multiplies it in registers.
// The fixed point is relative to the stretch's largest |p|: 15 bits, ~2^-16 of it per probability.
#include <cstdint>

#include "core/packed.h"
#include "gpu/byte_planes.cuh"
#include "gpu/meta.cuh"
#include "gpu/region.h"

namespace kvq::gpu::value_tiles {

constexpr int kStretch = 128;  // tokens per stretch: four tiles of 32, one per lane of a quad

// One region's values as a warp sees them. Per stretch: stage_probs (B into registers through the
// warp's scratch), then product() on m-tiles 0, 1, ... in order, each from its load().
template <int Bits, int D, class Meta>
struct ValueTiles {
  static constexpr int kMmas = planes::kMmas<Bits>;
  static constexpr int kBytes = planes::kBytes<Bits>;
  static constexpr int kMTiles = D / 16;  // m-tiles of 16 channels
  // A stretch's B bytes: [tile][part: hi, lo][slot], read back 16 bytes at a time.
  struct alignas(16) ProbScratch {
    std::uint8_t bytes[4][2][kBytes];
  };
  // m-tile m's loads for the lane: its tile's chunk of channels 16m + g and 16m + g + 8, their scales
  // and (asym) zero points.
  struct Loads {
    std::uint32_t w[2][Bits];
    Meta scale[2];
    Meta zero[2];
  };

  const std::uint32_t* codes;
  const Meta* scales;
  const Meta* zeros;               // asym: every group; hybrid: the region's compact zero points
  const std::uint32_t* zero_base;  // hybrid: the region's per-block bases
  GroupMode mode;
  int tiles, block_shift, g, t;  // block_shift: log2(tiles per group)
  float offset;  // a symmetric group's zero point, in codes
  // The current stretch: lane (g, t)'s B registers (tile t's part g % 2 where g / 2 == t, else 0),
  // lane t's tile sum of the fixed-point probabilities, and (hybrid) where its block's zero points
  // start and how many asymmetric channels come before the next m-tile.
  std::uint32_t b[kMmas][2];
  float tile_sum;
  const Meta* block_zeros;
  int before;

  __device__ __forceinline__ void init(const DeviceRegions& values, int r) {
    const RegionShape& s = values.shape;
    const int lane = threadIdx.x & 31;
    g = lane >> 2, t = lane & 3;
    mode = s.mode, block_shift = s.group_size == 32 ? 0 : s.group_size == 64 ? 1 : 2, tiles = (s.tokens + 31) / 32;
    offset = static_cast<float>(packed::sym_offset(Bits, s.twos));
    codes = values.codes + static_cast<long long>(r) * s.code_stride();
    scales = static_cast<const Meta*>(values.scales) + static_cast<long long>(r) * s.group_stride();
    zeros = static_cast<const Meta*>(values.zeros);
    zero_base = values.zero_base;
    if (mode == GroupMode::asym) zeros += static_cast<long long>(r) * s.group_stride();
    if (mode == GroupMode::hybrid) zeros += values.zero_offset[r], zero_base += static_cast<long long>(r) * s.zero_block_stride();
  }

  // Lane t's tile of stretch st (clamped: past the end its probabilities are 0) and that tile's block.
  __device__ __forceinline__ int tile_of(int st) const { return min(st * (kStretch / 32) + t, tiles - 1); }

  __device__ __forceinline__ void load(int st, int m, Loads& into) const {
    const int tile = tile_of(st), blk = tile >> block_shift;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int ch = 16 * m + g + 8 * k;
      const std::uint32_t* src = codes + (tile * D + ch) * Bits;
      if constexpr (Bits == 2) {
        const uint2 v = __ldg(reinterpret_cast<const uint2*>(src));
        into.w[k][0] = v.x, into.w[k][1] = v.y;
      } else if constexpr (Bits == 4 || Bits == 8) {
#pragma unroll
        for (int b = 0; b < Bits; b += 4) {
          const uint4 v = __ldg(reinterpret_cast<const uint4*>(src + b));
          into.w[k][b] = v.x, into.w[k][b + 1] = v.y, into.w[k][b + 2] = v.z, into.w[k][b + 3] = v.w;
        }
      } else {
#pragma unroll
        for (int b = 0; b < Bits; ++b) into.w[k][b] = __ldg(src + b);
      }
      into.scale[k] = __ldg(scales + blk * D + ch);
      into.zero[k] = mode == GroupMode::asym ? __ldg(zeros + blk * D + ch) : Meta(0);
    }
  }

  // Stretch st's probabilities (p[u]: token pos of tile u, on this lane) into B: fixed point relative
  // to the stretch's largest |p|, passed through the warp's scratch. Returns what turns a product
  // back into the probabilities' scale.
  __device__ __forceinline__ float stage_probs(int st, const float (&p)[4], int pos, ProbScratch& scratch) {
    float pmax = fmaxf(fmaxf(fabsf(p[0]), fabsf(p[1])), fmaxf(fabsf(p[2]), fabsf(p[3])));
    for (int off = 16; off > 0; off >>= 1) pmax = fmaxf(pmax, __shfl_xor_sync(0xffffffffu, pmax, off));
    const float range = pmax > 0.0f ? __fdividef(static_cast<float>(planes::kFixedMax), pmax) : 1.0f;
    __syncwarp();  // the previous stretch's reads of scratch are done
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int x = max(-planes::kFixedMax, min(planes::kFixedMax, __float2int_rn(p[u] * range)));
      std::uint8_t hi, lo;
      planes::split_fixed(x, hi, lo);
      scratch.bytes[u][0][planes::slot<Bits>(pos)] = hi, scratch.bytes[u][1][planes::slot<Bits>(pos)] = lo;
      if constexpr (Bits == 3) scratch.bytes[u][0][planes::slot_bit2(pos)] = hi, scratch.bytes[u][1][planes::slot_bit2(pos)] = lo;
    }
    __syncwarp();
    // Every lane reads tile t's part g % 2 (its tile sum needs it); only g / 2 == t keeps it as B.
    const bool live = (g >> 1) == t;
    const uint4* src = reinterpret_cast<const uint4*>(scratch.bytes[t][g & 1]);
    int part_sum = 0;
#pragma unroll
    for (int q = 0; q < kMmas / 2; ++q) {
      const uint4 v = src[q];
      const std::uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        b[2 * q + e / 2][e % 2] = live ? w[e] : 0u;
        if (q < 2) part_sum = __dp4a(static_cast<int>(w[e]), 0x01010101, part_sum);  // slots 0..31 hold every token once
      }
    }
    const int other = __shfl_xor_sync(0xffffffffu, part_sum, 4);  // lane (g ^ 1, t): the other part
    tile_sum = static_cast<float>((g & 1) ? 256 * other + part_sum : 256 * part_sum + other);
    if (mode == GroupMode::hybrid) {
      block_zeros = zeros + zero_base[tile_of(st) >> block_shift];
      before = 0;
    }
    return pmax > 0.0f ? pmax * (1.0f / planes::kFixedMax) : 1.0f;
  }

  // Channels 16m + g and 16m + g + 8 over lane t's tile: |s| dot + zero * sum, in the fixed point's
  // scale. Every lane of the warp must call it, for m = 0, 1, ... in order over each stretch.
  __device__ __forceinline__ void product(const Loads& cur, float (&out)[2]) {
    float scale[2], zero[2];
    bool sign[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      scale[k] = magnitude(cur.scale[k]);
      sign[k] = sign_bit(cur.scale[k]);
      zero[k] = mode == GroupMode::asym ? plain(cur.zero[k]) : -offset * scale[k];
    }
    if (mode == GroupMode::hybrid) {
      // Compact index: the block's base + asymmetric channels before ch in the block. Ballot bit
      // 4g' + t' is channel 16m + g' + 8k of tile t', and a tile's signs are its block's. Resolving
      // these a step ahead, once the scales have landed, measured no faster (docs/PERF.md).
      const unsigned mine = 0x11111111u << t, lower = (1u << (4 * g)) - 1u;
      const unsigned b0 = __ballot_sync(0xffffffffu, sign[0]) & mine, b1 = __ballot_sync(0xffffffffu, sign[1]) & mine;
      const int at0 = before + __popc(b0 & lower), at1 = before + __popc(b0) + __popc(b1 & lower);
      before += __popc(b0) + __popc(b1);
      if (sign[0]) zero[0] = plain(__ldg(block_zeros + at0));
      if (sign[1]) zero[1] = plain(__ldg(block_zeros + at1));
    }
    int c[4] = {};
#pragma unroll
    for (int j = 0; j < kMmas; ++j) {
      const std::uint32_t a[4] = {planes::a_word<Bits>(cur.w[0], j, 0), planes::a_word<Bits>(cur.w[1], j, 0), planes::a_word<Bits>(cur.w[0], j, 1),
                                  planes::a_word<Bits>(cur.w[1], j, 1)};
      planes::imma(c, a, b[j][0], b[j][1]);
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) out[k] = scale[k] * static_cast<float>(256 * c[2 * k] + c[2 * k + 1]) + zero[k] * tile_sum;
  }

  // The lanes' accumulators (acc[m][k]: channel 16m + g + 8k over lane t's tiles) summed over each
  // quad, into row[channel] ([D] floats, shared memory).
  __device__ __forceinline__ void store_sums(const float (&acc)[kMTiles][2], float* row) const {
#pragma unroll
    for (int m = 0; m < kMTiles; ++m)
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        float v = acc[m][k];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (t == ((2 * m + k) & 3)) row[16 * m + g + 8 * k] = v;
      }
  }
};

}  // namespace kvq::gpu::value_tiles
