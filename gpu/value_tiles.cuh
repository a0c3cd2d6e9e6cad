#pragma once
// A warp's lane-owned p . V^ over token-axis values, one stretch of 128 tokens at a time: the values
// half of the fused attention (gpu/attention_lane.cuh). Lane t of each quad owns the stretch's tile t
// (32 tokens, one 32-code chunk per channel, gpu/mantissa_pairs.cuh), so B's columns 2t, 2t+1 carry
// tile t's probabilities (hi and lo fp16 parts) and are zero outside lane t's k-slots; the warp then
// takes every m-tile of 16 channels, and each lane's accumulator pair is its own tile's dot product,
// which lies in one group: the group's scale multiplies it in registers. Codes decode in place into
// fp16 mantissas; the constant A's 1s add is taken back with the tile's probability sum.
#include <cstdint>

#include "core/packed.h"
#include "gpu/mantissa_pairs.cuh"
#include "gpu/meta.cuh"
#include "gpu/mma.cuh"
#include "gpu/region.h"

namespace kvq::gpu::value_tiles {

constexpr int kStretch = 128;  // tokens per stretch: four tiles of 32, one per lane of a quad

// One region's values as a warp sees them. Per stretch: set_probs (B into the warp's slice of shared
// memory), then product() on m-tiles 0, 1, ... in order, each from its load().
template <int Bits, int D, class Meta>
struct ValueTiles {
  static constexpr int kSteps = pairs::kPairs<Bits, false> / 2;
  static constexpr int kMTiles = D / 16;  // m-tiles of 16 channels
  using WarpB = uint2[kSteps][32];        // [step][lane]: the warp's B fragments
  using ProbScratch = float[4][33];       // a stretch's scaled probabilities, tile-major (33: no bank conflicts)
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
  int tiles, group_size, g, t;
  float offset;          // a symmetric group's zero point, in codes
  std::uint32_t b_base;  // shared address of the lane's B fragment of step 0
  // The current stretch: lane t's tile sums, and (hybrid) where its block's zero points start and
  // how many asymmetric channels come before the next m-tile.
  float tile_sum, tile_constant;
  const Meta* block_zeros;
  int before;

  __device__ __forceinline__ void init(const DeviceRegions& values, int r, WarpB& b) {
    const RegionShape& s = values.shape;
    const int lane = threadIdx.x & 31;
    g = lane >> 2, t = lane & 3;
    mode = s.mode, group_size = s.group_size, tiles = (s.tokens + 31) / 32;
    offset = static_cast<float>(packed::sym_offset(Bits, s.twos));
    codes = values.codes + static_cast<long long>(r) * s.code_stride();
    scales = static_cast<const Meta*>(values.scales) + static_cast<long long>(r) * s.group_stride();
    zeros = static_cast<const Meta*>(values.zeros);
    zero_base = values.zero_base;
    if (mode == GroupMode::asym) zeros += static_cast<long long>(r) * s.group_stride();
    if (mode == GroupMode::hybrid) zeros += values.zero_offset[r], zero_base += static_cast<long long>(r) * s.zero_block_stride();
    b_base = static_cast<std::uint32_t>(__cvta_generic_to_shared(&b[0][lane]));
  }

  // Lane t's tile of stretch st (clamped: past the end its probabilities are 0) and that tile's block.
  __device__ __forceinline__ int tile_of(int st) const { return min(st * (kStretch / 32) + t, tiles - 1); }

  __device__ __forceinline__ void load(int st, int m, Loads& into) const {
    const int tile = tile_of(st), blk = 32 * tile / group_size;
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

  // Stretch st's probabilities (p[u]: token pos of tile u, on this lane) into B: scaled by one power
  // of two per stretch, so small probabilities keep their bits, and passed through the warp's
  // scratch. Returns 1 / that power of two.
  __device__ __forceinline__ float stage_probs(int st, const float (&p)[4], int pos, ProbScratch& scratch, WarpB& b) {
    float pmax = fmaxf(fmaxf(fabsf(p[0]), fabsf(p[1])), fmaxf(fabsf(p[2]), fabsf(p[3])));
    for (int off = 16; off > 0; off >>= 1) pmax = fmaxf(pmax, __shfl_xor_sync(0xffffffffu, pmax, off));
    const float range = pairs::range_scale(pmax);
    __syncwarp();  // the previous stretch's reads of scratch and B are done
#pragma unroll
    for (int u = 0; u < 4; ++u) scratch[u][pos] = p[u] * range;
    __syncwarp();
    set_probs(st, &scratch[0][0], 33, b);
    __syncwarp();
    return 1.0f / range;
  }

  // Stretch st's B from its scaled probabilities (`probs`: the warp's [4][stride] floats, tile u's
  // token i at probs[u * stride + i]), and lane t's tile sums; stage_probs syncs the warp around it.
  __device__ __forceinline__ void set_probs(int st, const float* probs, int stride, WarpB& b) {
    const float* v = probs + t * stride;
    const int lane = threadIdx.x & 31, part = g & 1;
    const bool live = (g >> 1) == t;
    float sum = 0.0f, constant = 0.0f;
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      std::uint32_t half2s[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const pairs::Pair P = pairs::pair<Bits, false>(2 * j + e);
        const float lo = v[P.lo], hi = v[P.hi], w = P.weight();
        half2s[e] = mma::pack_half2(mma::split_part(lo * w, part), mma::split_part(hi * w, part));  // exact products
        constant += (lo + hi) * w;  // fp32: ~2^-22 off the hi + lo parts' sum
        if (P.plane == 1) sum += lo + hi;  // every code appears in one low-plane pair
      }
      b[j][lane] = live ? make_uint2(half2s[0], half2s[1]) : make_uint2(0u, 0u);
    }
    tile_sum = sum, tile_constant = constant;
    if (mode == GroupMode::hybrid) {
      block_zeros = zeros + zero_base[32 * tile_of(st) / group_size];
      before = 0;
    }
  }

  // Channels 16m + g and 16m + g + 8 over lane t's tile: |s| (dot - constant) + zero * sum, in the
  // probabilities' scale. Every lane of the warp must call it, for m = 0, 1, ... in order.
  __device__ __forceinline__ void product(int m, const Loads& cur, std::uint32_t ones, float (&out)[2]) {
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
      // 4g' + t' is channel 16m + g' + 8k of tile t', and a tile's signs are its block's.
      const unsigned mine = 0x11111111u << t, lower = (1u << (4 * g)) - 1u;
      const unsigned b0 = __ballot_sync(0xffffffffu, sign[0]) & mine, b1 = __ballot_sync(0xffffffffu, sign[1]) & mine;
      const int at0 = before + __popc(b0 & lower), at1 = before + __popc(b0) + __popc(b1 & lower);
      before += __popc(b0) + __popc(b1);
      if (sign[0]) zero[0] = plain(__ldg(block_zeros + at0));
      if (sign[1]) zero[1] = plain(__ldg(block_zeros + at1));
    }
    // Two accumulators, even and odd steps: two dependent mma chains of half the length.
    float c[2][4] = {};
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      // Volatile, as in key_units.cuh: B stays in shared memory rather than in registers.
      std::uint32_t b0, b1;
      asm volatile("ld.volatile.shared.v2.u32 {%0, %1}, [%2];" : "=r"(b0), "=r"(b1) : "r"(b_base + 8u * (32u * j)));
      const std::uint32_t a[4] = {pairs::decode<Bits, false>(cur.w[0], 2 * j, ones), pairs::decode<Bits, false>(cur.w[1], 2 * j, ones),
                                  pairs::decode<Bits, false>(cur.w[0], 2 * j + 1, ones), pairs::decode<Bits, false>(cur.w[1], 2 * j + 1, ones)};
      mma::mma(c[j & 1], a, b0, b1);
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const float dot = (c[0][2 * k] + c[0][2 * k + 1]) + (c[1][2 * k] + c[1][2 * k + 1]);
      out[k] = scale[k] * (dot - tile_constant) + zero[k] * tile_sum;
    }
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
