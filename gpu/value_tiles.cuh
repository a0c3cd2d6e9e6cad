#pragma once
// A warp's lane-owned p . V^ over token-axis values, one stretch of 128 tokens at a time: the values
// half of the fused attention (gpu/attention_lane.cuh). Lane t of each quad owns the stretch's tile t
// (32 tokens, one 32-code chunk per channel) on int8 tensor cores (gpu/byte_planes.cuh): codes are
// exact u8 with no offset (at the top of their bytes, a_word_high: times a power of two that the
// stretch's range takes back), the probabilities signed 16-bit fixed point (hi and lo s8 bytes in B's
// columns 2t, 2t+1, zero outside lane t's k-slots), so each lane's accumulator pair is its own tile's
// exact integer dot product, which lies in one group: the group's scale multiplies it in registers.
// The fixed point is relative to the stretch's largest |p|: 15 bits, ~2^-16 of it per probability.
#include <cstddef>
#include <cstdint>

#include "core/packed.h"
#include "gpu/byte_planes.cuh"
#include "gpu/meta.cuh"
#include "gpu/pipeline.cuh"
#include "gpu/region.h"
#include "gpu/region_arrays.cuh"

namespace kvq::gpu::value_tiles {

constexpr int kStretch = 128;  // tokens per stretch: four tiles of 32, one per lane of a quad

// A kernel's group mode for its values: fixed when it is built (a GroupMode's value), so that its loop
// tests no mode, or kModeAtRunTime, read from the region's shape.
constexpr int kModeAtRunTime = -1;

// One region's values as a warp streams them through shared memory: the stages, their copies, and
// where a stretch's tiles and hybrid zero points start. ValueTiles (one query head, lane-owned tiles)
// and gpu/head_tiles.cuh (GQA groups, shared tiles) take their products from the same stages.
template <int Bits, int D, class Meta, int FixedMode = kModeAtRunTime, int Stages = 2>
struct ValueStages {
  // A stretch's codes, scales and (asym) zero points in shared memory, where the warp copies them
  // with cp.async (copy_stretch) while it works on the stretches before: kStages - 1 whole stretches
  // in flight per warp with no registers held for them. Each tile's rows and each block's metadata
  // are padded by 32 bytes so that one load's lanes (4 tiles x 8 channels) fall on distinct banks.
  struct alignas(16) Stage {
    static constexpr int kTileBytes = D * Bits * 4;
    static constexpr int kTilePitch = kTileBytes + 32;
    static constexpr int kMetaPitch = D + 32 / static_cast<int>(sizeof(Meta));
    std::uint8_t codes[4][kTilePitch];
    Meta scales[4][kMetaPitch];
    Meta zeros[4][kMetaPitch];
  };
  static_assert(Stage::kTileBytes % 16 == 0 && (D * sizeof(Meta)) % 16 == 0, "cp.async moves 16-byte pieces");
  // Stages per warp: the stretch being worked on and the kStages - 1 next ones in flight (stretch i
  // of the warp's sequence in stages[i % kStages]).
  static constexpr int kStages = Stages;
  static_assert(kStages >= 2, "a stretch in flight while the warp works on one");

  const std::uint32_t* codes;
  const Meta* scales;
  const Meta* zeros;               // asym: every group; hybrid: the region's compact zero points
  const std::uint32_t* zero_base;  // hybrid: the region's per-block bases
  GroupMode mode;  // the region's (FixedMode where that is fixed)
  int tiles, block_shift, g, t;  // block_shift: log2(tiles per group)
  float offset;  // a symmetric group's zero point, in codes

  __device__ __forceinline__ void init(const DeviceRegions& values, int r) {
    const RegionShape& s = values.shape;
    const int lane = threadIdx.x & 31;
    g = lane >> 2, t = lane & 3;
    mode = s.mode, block_shift = s.group_size == 32 ? 0 : s.group_size == 64 ? 1 : 2, tiles = (s.tokens + 31) / 32;
    offset = static_cast<float>(packed::sym_offset(Bits, s.twos));
    const RegionArrays<Meta> a = region_arrays<Meta>(values, r);
    codes = a.codes, scales = a.scales, zeros = a.zeros, zero_base = a.zero_base;
  }

  __device__ __forceinline__ GroupMode group_mode() const {
    if constexpr (FixedMode == kModeAtRunTime) return mode;
    else return static_cast<GroupMode>(FixedMode);
  }

  // Lane t's tile of stretch st (clamped: past the end its probabilities are 0) and that tile's block.
  __device__ __forceinline__ int tile_of(int st) const { return min(st * (kStretch / 32) + t, tiles - 1); }

  // Starts the copy of stretch st into `stage` (whole tiles and blocks: past the region's end nothing
  // is copied) and commits it as one cp.async group of this lane. Every lane of the warp must call it.
  // Needs codes, scales and zeros 16-byte aligned (aligned16).
  __device__ __forceinline__ void copy_stretch(int st, Stage& stage) const {
    const int lane = threadIdx.x & 31, tile0 = st * (kStretch / 32), live = min(4, tiles - tile0);
    const int blk0 = tile0 >> block_shift, blocks = ((tile0 + live - 1) >> block_shift) - blk0 + 1;
    constexpr int kPieces = Stage::kTileBytes / 16, kMetaPieces = D * static_cast<int>(sizeof(Meta)) / 16;
    const char* src = reinterpret_cast<const char*>(codes + static_cast<long long>(tile0) * D * Bits);
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(&stage));
#pragma unroll
    for (int i = lane; i < 4 * kPieces; i += 32) {
      const int tile = i / kPieces, piece = i % kPieces;
      if (tile < live) copy16_fetch256(dst + tile * Stage::kTilePitch + 16 * piece, src + 16 * static_cast<long long>(i));
    }
    // The stretch's blocks are contiguous in global memory: piece i is block i / kMetaPieces's.
    const unsigned meta_dst = dst + static_cast<unsigned>(offsetof(Stage, scales)), zero_dst = dst + static_cast<unsigned>(offsetof(Stage, zeros));
    const long long meta0 = static_cast<long long>(blk0) * D * static_cast<long long>(sizeof(Meta));
    for (int i = lane; i < blocks * kMetaPieces; i += 32) {
      const int blk = i / kMetaPieces, piece = i % kMetaPieces;
      const unsigned at = static_cast<unsigned>(blk * Stage::kMetaPitch * static_cast<int>(sizeof(Meta)) + 16 * piece);
      copy16_fetch256(meta_dst + at, reinterpret_cast<const char*>(scales) + meta0 + 16 * i);
      if (group_mode() == GroupMode::asym) copy16_fetch256(zero_dst + at, reinterpret_cast<const char*>(zeros) + meta0 + 16 * i);
    }
    copy_commit();
  }

  // The first kStages - 1 of the warp's stretches, st, st + step, ..., each into its stage and each a
  // cp.async group (empty past `last`), before the warp's loop. st < last. Every lane of the warp
  // must call it.
  __device__ __forceinline__ void copy_first(int st, int step, int last, Stage* stages) const {
    copy_stretch(st, stages[0]);
#pragma unroll
    for (int j = 1; j < kStages - 1; ++j) {
      if (st + j * step < last) copy_stretch(st + j * step, stages[j]);
      else copy_commit();
    }
  }

  // Before the warp works on its i-th stretch: once every lane is done reading the stage it
  // overwrites, starts the copy of the warp's stretch `next`, kStages - 1 ahead, into that stage. Past
  // `last` it commits an empty group, so that landed() always leaves exactly kStages - 1 groups
  // pending.
  __device__ __forceinline__ void copy_next(unsigned i, int next, int last, Stage* stages) const {
    ring_refill<kStages>(i, next < last, stages, [&](Stage& stage) { copy_stretch(next, stage); });
  }

  // The warp's i-th stretch once every lane's copies of it have landed.
  __device__ __forceinline__ Stage& landed(unsigned i, Stage* stages) const { return ring_landed<kStages>(i, stages); }

  // Where lane t's block of stretch st starts in the region's compact zero points (hybrid; else 0):
  // loaded a stretch ahead and handed to ValueTiles::stage_probs or expand_zeros, so that no m-tile
  // waits on it.
  __device__ __forceinline__ int zero_start(int st) const {
    return group_mode() == GroupMode::hybrid ? static_cast<int>(__ldg(zero_base + (tile_of(st) >> block_shift))) : 0;
  }

  // Hybrid: the landed stretch st's compact zero points, put into the stage's zeros at their groups'
  // channels, where asym's are, so that the products read both alike. zero_first is zero_start(st)
  // (lane u < 4 holds tile u's block's). All the stretch's loads go out before the first store. Every
  // lane of the warp must call it.
  __device__ __forceinline__ void expand_zeros(Stage& stage, int st, int zero_first) const {
    if (group_mode() != GroupMode::hybrid) return;
    const int tile0 = st * (kStretch / 32), live = min(4, tiles - tile0);
    const int blocks = ((tile0 + live - 1) >> block_shift) - (tile0 >> block_shift) + 1;
    BlockZeros<D / 32, Meta> z[4];  // a block's entries: its channels
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int base = __shfl_sync(0xffffffffu, zero_first, (j << block_shift) & 31);  // block j starts at tile j << block_shift
      z[j].load(stage.scales[j], zeros, base, j < blocks ? D : 0);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) z[j].store(stage.zeros[j]);
    __syncwarp();
  }
};

// One query head's values, lane-owned: per stretch, copy_next into a stage kStages - 1 stretches ahead,
// zero_start a stretch ahead (hybrid), stage_probs (B into registers through the warp's scratch), then
// load() on m-tiles 0, 1, ... in order out of the landed stage, each ahead of its product(), also in
// order.
template <int Bits, int D, class Meta, int FixedMode = kModeAtRunTime, int Stages = 2>
struct ValueTiles : ValueStages<Bits, D, Meta, FixedMode, Stages> {
  using Base = ValueStages<Bits, D, Meta, FixedMode, Stages>;
  using typename Base::Stage;
  using Base::g, Base::t, Base::group_mode, Base::offset, Base::zeros, Base::tile_of, Base::block_shift;
  static constexpr int kMmas = planes::kMmas;
  static constexpr int kBytes = planes::kBytes;
  static constexpr int kMTiles = D / 16;  // m-tiles of 16 channels
  // A stretch's B bytes: [tile][part: hi, lo][slot], read back 16 bytes at a time.
  struct alignas(16) ProbScratch {
    std::uint8_t bytes[4][2][kBytes];
  };
  // m-tile m's loads for the lane: its tile's chunk of channels 16m + g and 16m + g + 8, their scales
  // and zero points (asym; hybrid where the scale's sign bit marks the group asymmetric), the zero
  // points' global loads still in flight when load() returns.
  struct Loads {
    std::uint32_t w[2][Bits];
    std::uint32_t scale[2];  // Meta's bits
    std::uint32_t zero[2];
  };
  // The current stretch: lane (g, t)'s B registers (tile t's part g % 2 where g / 2 == t, else 0),
  // lane t's tile sum of the fixed-point probabilities, and (hybrid) where its block's zero points
  // start and how many asymmetric channels come before the next m-tile load() takes.
  std::uint32_t b[kMmas][2];
  float tile_sum;
  const Meta* block_zeros;
  unsigned before;
  unsigned mine, below;  // hybrid: the ballot bits of lane t's tile, and of its channels before g

  // m-tile m's loads for the lane (channels 16m + g and 16m + g + 8) from the landed stage of stretch
  // st, lane t's tile clamped to the stretch's live ones. Every lane of the warp must call it, for
  // m = 0, 1, ... in order over each stretch (hybrid: ballots), after stage_probs.
  __device__ __forceinline__ void load(const Stage& stage, int st, int m, Loads& into) {
    const int tile0 = st * (kStretch / 32), tile = tile_of(st) - tile0, blk = (tile_of(st) >> block_shift) - (tile0 >> block_shift);
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int ch = 16 * m + g + 8 * k;
      const std::uint8_t* row = stage.codes[tile] + ch * Bits * 4;
      if constexpr (Bits == 2) {
        const uint2 v = *reinterpret_cast<const uint2*>(row);
        into.w[k][0] = v.x, into.w[k][1] = v.y;
      } else if constexpr (Bits == 4 || Bits == 8) {
#pragma unroll
        for (int b = 0; b < Bits; b += 4) {
          const uint4 v = reinterpret_cast<const uint4*>(row)[b / 4];
          into.w[k][b] = v.x, into.w[k][b + 1] = v.y, into.w[k][b + 2] = v.z, into.w[k][b + 3] = v.w;
        }
      } else {
#pragma unroll
        for (int b = 0; b < Bits; ++b) into.w[k][b] = reinterpret_cast<const std::uint32_t*>(row)[b];
      }
      into.scale[k] = stage.scales[blk][ch];
      into.zero[k] = group_mode() == GroupMode::asym ? stage.zeros[blk][ch] : 0u;
    }
    if (group_mode() == GroupMode::hybrid) {
      // Compact index: the block's base + asymmetric channels before ch in the block. Ballot bit
      // 4g' + t' is channel 16m + g' + 8k of tile t', and a tile's signs are its block's. The global
      // load goes out here, an m-tile or more before product() takes it.
      const bool asym0 = sign_bit(static_cast<Meta>(into.scale[0])), asym1 = sign_bit(static_cast<Meta>(into.scale[1]));
      const unsigned b0 = __ballot_sync(0xffffffffu, asym0), b1 = __ballot_sync(0xffffffffu, asym1);
      const unsigned n0 = __popc(b0 & mine);
      const unsigned at0 = before + __popc(b0 & below), at1 = before + n0 + __popc(b1 & below);
      before += n0 + __popc(b1 & mine);
      into.zero[0] = asym0 ? __ldg(entry_at(block_zeros, at0)) : 0u;
      into.zero[1] = asym1 ? __ldg(entry_at(block_zeros, at1)) : 0u;
    }
  }

  // Stretch st's probabilities (p[u]: token pos of tile u, on this lane) into B: fixed point relative
  // to the stretch's largest |p|, passed through the warp's scratch; zero_first is zero_start(st).
  // Returns what turns a product back into the probabilities' scale.
  __device__ __forceinline__ float stage_probs(const float (&p)[4], int pos, int zero_first, ProbScratch& scratch) {
    float pmax = fmaxf(fmaxf(fabsf(p[0]), fabsf(p[1])), fmaxf(fabsf(p[2]), fabsf(p[3])));
    for (int off = 16; off > 0; off >>= 1) pmax = fmaxf(pmax, __shfl_xor_sync(0xffffffffu, pmax, off));
    // fixed_range written out: the return's two constant factors fold into one multiply.
    const float range = pmax > 0.0f ? __fdividef(static_cast<float>(planes::kFixedMax), pmax) : 1.0f;
    __syncwarp();  // the previous stretch's reads of scratch are done
#pragma unroll
    for (int u = 0; u < 4; ++u) planes::put_fixed<Bits>(p[u], range, pos, scratch.bytes[u]);
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
        part_sum = __dp4a(static_cast<int>(w[e]), 0x01010101, part_sum);  // the 32 slots hold every token once
      }
    }
    const int other = __shfl_xor_sync(0xffffffffu, part_sum, 4);  // lane (g ^ 1, t): the other part
    tile_sum = static_cast<float>((g & 1) ? 256 * other + part_sum : 256 * part_sum + other) * planes::kHighScale<Bits>;
    block_zeros = zeros + zero_first;
    before = 0;
    // Set every stretch: set once in init, they cost the loop a register (one more instruction).
    mine = 0x11111111u << t, below = mine & ((1u << (4 * g)) - 1u);
    return (pmax > 0.0f ? pmax * (1.0f / planes::kFixedMax) : 1.0f) * (1.0f / planes::kHighScale<Bits>);
  }

  // Channels 16m + g and 16m + g + 8 over lane t's tile (cur: load() of m-tile m): |s| dot + zero *
  // sum, in the fixed point's scale.
  __device__ __forceinline__ void product(const Loads& cur, float (&out)[2]) const {
    float scale[2], zero[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      if (group_mode() == GroupMode::hybrid) {
        // No test of the mode bit: load() fetched an asymmetric group's zero point and left 0 for a
        // symmetric one, and the stored scale plus its magnitude is 0 for the first (sign set) and
        // 2|s| for the second, whose zero point is -offset |s|. Every step is exact.
        const float stored = plain(static_cast<Meta>(cur.scale[k]));
        scale[k] = fabsf(stored);
        zero[k] = fmaf(-0.5f * offset, stored + scale[k], plain(static_cast<Meta>(cur.zero[k])));
      } else {
        scale_and_zero(static_cast<Meta>(cur.scale[k]), static_cast<Meta>(cur.zero[k]), group_mode(), offset, scale[k], zero[k]);
      }
    }
    int c[4] = {};
#pragma unroll
    for (int j = 0; j < kMmas; ++j) {
      const std::uint32_t a[4] = {planes::a_word_high<Bits>(cur.w[0], j, 0), planes::a_word_high<Bits>(cur.w[1], j, 0),
                                  planes::a_word_high<Bits>(cur.w[0], j, 1), planes::a_word_high<Bits>(cur.w[1], j, 1)};
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
