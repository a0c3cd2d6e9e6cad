#pragma once
// A warp's p . V^ over token-axis values for a GQA group of query heads, one 128-token stretch at a
// time, on int8 tensor cores (gpu/byte_planes.cuh). The one-head tiles (gpu/value_tiles.cuh) give
// each lane of a quad its own tile and leave six of B's eight columns zero; here the quad shares
// each tile instead (lane t takes the k-slots of step t), so one m16n8k32 covers a whole 32-token
// chunk, which lies in one group, and B's column 2h + part carries head h's hi or lo fixed-point
// byte: lane t's accumulator pair is head t's exact dot product over the tile, and the tile's group
// scale multiplies it in registers. Heads 4..7 take a second B (quad q: heads 4q..4q+3).
//
// A lane's two rows are the adjacent channels 16m + 2g and 16m + 2g + 1, so that their codes and
// scales are one shared-memory load each. The probabilities are 16-bit fixed point relative to each
// head's largest |p| in the stretch, as for one head. Sym (symmetric values, every group): the zero
// point, an integer offset in codes, comes off the integer dot product (offset times the tile's
// integer sum of p), with no zero points loaded or tested.
#include <cstdint>
#include <type_traits>

#include "gpu/byte_planes.cuh"
#include "gpu/meta.cuh"
#include "gpu/value_tiles.cuh"

namespace kvq::gpu::head_tiles {

using value_tiles::kStretch;

// Per stretch: copy_stretch into a stage a stretch ahead, zero_start a stretch ahead (hybrid),
// stage_probs and locate(), then, once the stage has landed, expand_zeros (hybrid) and load() on the
// m-tiles, each ahead of its product(). Quads: B sets of 4 heads (1 for groups up to 4, 2 up to 8).
template <int Bits, int D, class Meta, int Quads, bool Sym = false>
struct HeadTiles : value_tiles::ValueStages<Bits, D, Meta> {
  using Base = value_tiles::ValueStages<Bits, D, Meta>;
  using typename Base::Stage;
  using Base::g, Base::t, Base::mode, Base::offset, Base::tiles, Base::block_shift;
  static constexpr int kHeads = 4 * Quads;
  static constexpr int kWords = planes::kLaneWords<Bits>;
  static constexpr int kBytes = planes::kBytes;
  static constexpr int kMTiles = D / 16;  // m-tiles of 16 channels

  // A stretch's B bytes: [tile][head][part: hi, lo][slot], read back 8 bytes at a time.
  struct alignas(16) ProbScratch {
    std::uint8_t bytes[4][kHeads][2][kBytes];
  };
  // A row pair's two metadata entries, in one register where they are fp16.
  using MetaPair = std::conditional_t<sizeof(Meta) == 2, std::uint32_t, uint2>;
  // m-tile m's loads for the lane, per tile u of the stretch: the words it reads of channels 16m + 2g
  // and 16m + 2g + 1 (row k), their scales and zero points (asym; hybrid where the scale's sign bit
  // marks the group asymmetric).
  struct Loads {
    std::uint32_t w[4][2][kWords];
    MetaPair scale[4];
    MetaPair zero[4];
  };

  // The current stretch: lane (g, t)'s B registers (head 4q + g / 2's part g % 2 of each tile), the
  // tile sums of head 4q + t's fixed-point probabilities, what turns its products back
  // into the probabilities' scale, and where its loads start in the stage (locate()).
  std::uint32_t b[4][Quads][2];
  float tile_sum[Quads][4];
  int tile_offset[Quads][4];  // Sym: tile_sum times the code offset, in integers
  float inv_range[Quads];
  int code_at[4], meta_at[4];

  // A stretch's probabilities (p[h][u]: head h's on token 32u + lane of the stretch, 0 past the end
  // and for heads past the group) into B through the warp's scratch.
  __device__ __forceinline__ void stage_probs(const float (&p)[kHeads][4], int group, ProbScratch& scratch) {
    const int lane = threadIdx.x & 31;
    float range[kHeads];
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      float pmax = fmaxf(fmaxf(fabsf(p[h][0]), fabsf(p[h][1])), fmaxf(fabsf(p[h][2]), fabsf(p[h][3])));
      for (int off = 16; off > 0; off >>= 1) pmax = fmaxf(pmax, __shfl_xor_sync(0xffffffffu, pmax, off));
      float inv;
      range[h] = planes::fixed_range(pmax, inv);
      if (h % 4 == t) inv_range[h / 4] = inv;
    }
    __syncwarp();  // the previous stretch's reads of scratch are done
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        if (h >= group) break;
        planes::put_fixed<Bits>(p[h][u], range[h], lane, scratch.bytes[u][h]);
      }
    __syncwarp();
#pragma unroll
    for (int q = 0; q < Quads; ++q)
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int h = 4 * q + (g >> 1);
        const int sum = planes::shared_b<Bits>(scratch.bytes[u][h], h < group, g, t, b[u][q]);
        tile_sum[q][u] = static_cast<float>(sum);
        tile_offset[q][u] = static_cast<int>(offset) * sum;
      }
  }

  // Where the lane's loads of stretch st start in a stage, for each tile u: its words of channel 2g
  // of m-tile 0, and that channel's metadata (in Meta entries). Tiles past the region's end read its
  // last live tile (their probabilities are 0).
  __device__ __forceinline__ void locate(int st) {
    const int tile0 = st * (kStretch / 32), live = min(4, tiles - tile0);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int tile = min(u, live - 1), blk = ((tile0 + tile) >> block_shift) - (tile0 >> block_shift);
      code_at[u] = tile * Stage::kTilePitch + 2 * g * Bits * 4 + 4 * planes::lane_word0<Bits>(t);
      meta_at[u] = blk * Stage::kMetaPitch + 2 * g;
    }
  }

  // m-tile m's loads for the lane from the landed stage (hybrid: after expand_zeros), at locate()'s
  // places.
  __device__ __forceinline__ void load(const Stage& stage, int m, Loads& into) const {
    const std::uint8_t* codes0 = stage.codes[0] + m * 16 * Bits * 4;
    const Meta* scales0 = stage.scales[0] + 16 * m;
    const Meta* zeros0 = stage.zeros[0] + 16 * m;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const std::uint8_t* row = codes0 + code_at[u];
      if constexpr (Bits == 2) {
        const uint4 v = *reinterpret_cast<const uint4*>(row);  // both rows' chunks
        into.w[u][0][0] = v.x, into.w[u][0][1] = v.y, into.w[u][1][0] = v.z, into.w[u][1][1] = v.w;
      } else if constexpr (Bits == 3) {
        const uint2* src = reinterpret_cast<const uint2*>(row);  // 24 bytes on 8
        const uint2 v0 = src[0], v1 = src[1], v2 = src[2];
        into.w[u][0][0] = v0.x, into.w[u][0][1] = v0.y, into.w[u][0][2] = v1.x;
        into.w[u][1][0] = v1.y, into.w[u][1][1] = v2.x, into.w[u][1][2] = v2.y;
      } else {
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const uint2 v = *reinterpret_cast<const uint2*>(row + k * Bits * 4);
          into.w[u][k][0] = v.x, into.w[u][k][1] = v.y;
        }
      }
      // The channel is even: the pair is one aligned load.
      into.scale[u] = *reinterpret_cast<const MetaPair*>(scales0 + meta_at[u]);
      into.zero[u] = !Sym && mode != GroupMode::sym ? *reinterpret_cast<const MetaPair*>(zeros0 + meta_at[u]) : MetaPair{};
    }
  }

  // Channels 16m + 2g and 16m + 2g + 1 (cur: load() of m-tile m) over the stretch, for head 4q + t:
  // acc[q][k] += (|s| dot + zero * sum) / range, tile by tile.
  __device__ __forceinline__ void product(const Loads& cur, float (&acc)[Quads][2]) const {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      float scale[2], zero[2];
      if constexpr (Sym && sizeof(Meta) == 2) {
        const float2 s = magnitude_pair(cur.scale[u]);
        scale[0] = s.x, scale[1] = s.y;
      } else if constexpr (Sym) {
        scale[0] = magnitude(cur.scale[u].x), scale[1] = magnitude(cur.scale[u].y);
      } else if constexpr (sizeof(Meta) == 2) {
        scale_and_zero_pair(cur.scale[u], cur.zero[u], mode, offset, scale, zero);
      } else {
#pragma unroll
        for (int k = 0; k < 2; ++k) scale_and_zero(entry(cur.scale[u], k), entry(cur.zero[u], k), mode, offset, scale[k], zero[k]);
      }
      std::uint32_t a[4];
      planes::a_regs_at<Bits>(cur.w[u][0], cur.w[u][1], t, a);
#pragma unroll
      for (int q = 0; q < Quads; ++q)
        planes::add_chunk_terms<Bits, Sym>(a, b[u][q], scale, zero, tile_sum[q][u], tile_offset[q][u], inv_range[q], acc[q]);
    }
  }

 private:
  // Row k's entry of a pair.
  __device__ __forceinline__ static Meta entry(const MetaPair& v, int k) {
    if constexpr (sizeof(Meta) == 2) return static_cast<Meta>(k ? v >> 16 : v & 0xffffu);
    else return k ? v.y : v.x;
  }
};

}  // namespace kvq::gpu::head_tiles
