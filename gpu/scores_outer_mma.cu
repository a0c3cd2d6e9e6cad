// Scores over token-axis keys (the outer layout: KIVI's per-channel keys) on tensor cores.
//
// score_t = sum_c q_c (f_tc |s_rc| + z_rc) for the group row r of token t (G tokens per row). The
// group spans the scores, not the reduction over channels, so its scale cannot leave the sum: it goes
// into B with q. A holds the codes of 16 tokens (rows) over the channels (k); B the channels' q |s|
// for the tokens' row in parts (up to 4 heads share an mma). The zero points' part, sum_c q_c z_rc per
// (head, row), runs on CUDA cores.
//
// 2-bit codes and one query head: int8 tensor cores (m16n8k32, u8 A, s8 B, s32 accumulate, every
// product exact). B is q |s| as 24-bit fixed point relative to the largest |q s| in the row, its hi, mid
// and lo s8 bytes in columns 0, 1, 2. Lane (g, t) owns tokens 16m + 2g (row g) and 16m + 2g + 1 (row
// g + 8) of m-tile m, both in byte 4m + g / 2 of a channel's chunk, at bits 4 (g % 2) and 4 (g % 2) + 2
// (ByteRows). Its k-slots 4t + e and 16 + 4t + e of k-step j are channels 32j + 4t + e and 32j + 16 + 4t
// + e: three PRMTs gather that byte of the four chunks into one register, and one AND per row keeps the
// row's field, f 2^pos as an exact u8. Per mma of 512 codes: 6 PRMTs and 4 ANDs, where the fp16 form
// takes 20 instructions per 256. (H100, paper shape, N = 32768: 29.2 -> 25.1 us; a 16-bit B ran 23.8
// but gave NMSE 3.9e-7 where a channel was 15 times the rest. GQA groups keep the fp16 form: with four
// heads' 16-bit B built per tile, the serving shape ran 127 -> 131 us.)
//
// Otherwise fp16 tensor cores (m16n8k16; gpu/outer_mma.cuh's decode, shared with the outer values), B
// as fp16 hi + lo parts, head h's in columns 2h, 2h + 1. A channel's 32 tokens of a tile are one
// chunk, laid out as a token's 32 channels are in channel-axis values: lane (g, t) owns the same tokens
// and decodes them as outputs_outer_mma does. K-slot e of lane t in k-step j (k = 2t, 2t + 1, 2t + 8, 2t + 9 for e = 0..3)
// is channel 16j + 4t + e, so lane l = 4j + t builds B for channels 4l .. 4l + 3 (one 8-byte load of
// their scales). 4- and 8-bit chunks are swizzled in shared memory (chunk_slot) so that a load's four
// channels, one per t, fall on distinct banks.
//
// Range. A tile's scores are complete after its k-steps, so nothing accumulates across tiles. The int8
// B takes each row's own range (fixed point: an entry 2^k below the row's largest keeps 24 - k bits). The fp16 B is scaled by a
// power of two R that brings the largest q |s| seen so far near 2^14; R only falls (one vote per group
// row checks it), so entries 2^28 below the largest lose bits, nothing overflows.
//
// Each warp streams 32-token tiles of codes through two cp.async stages in shared memory, with no block
// barrier. The builder lanes load the scales and asym zero points of the tile's group rows (two for
// groups of 16 tokens, else one) a tile ahead into registers, as the hybrid zero bases.
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/packed.h"
#include "gpu/byte_planes.cuh"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/launch.h"
#include "gpu/meta.cuh"
#include "gpu/mma.cuh"
#include "gpu/outer_mma.cuh"
#include "gpu/pipeline.cuh"
#include "gpu/region_arrays.cuh"
#include "gpu/scores_outer_mma.h"

namespace kvq::gpu {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kStages = 2;      // tiles per warp in shared memory (3 and 4 measured no faster on the H100)
// Tiles a warp named to L2 before the wait where prefetch_first_units asks (KIVI's attention at
// N = 32768 on the H100: docs/PERF.md).
constexpr int kPrefetchTiles = 1;
constexpr int kMaxRange = 100;  // |exponent| of B's power of two: 2^+-100 and the rows' weights stay normal
using outer_mma::kWordsPerMTile;
using outer_mma::ByteRows;
using outer_mma::kInt8;
using outer_mma::LaneDecode;
using outer_mma::s8_upper;

// A 32-token tile of codes in shared memory: D chunks of Bits words, channel c's at chunk_slot(c).
template <int Bits, int D>
struct alignas(16) Tile {
  std::uint32_t codes[D * Bits];
};

// Where channel c's chunk sits in a tile, in chunks. A load reads channels 16j + 4t + e for t = 0..3:
// 2-bit chunks (8 bytes) fall on distinct banks as they are; 4-bit chunks (16 bytes) would collide for
// t and t + 2, 8-bit ones (32 bytes) for every t, so their chunk index is XORed with t / 2 and t.
template <int Bits>
__device__ __forceinline__ int chunk_slot(int c) {
  if constexpr (Bits == 4) return c ^ ((c >> 3) & 1);
  else if constexpr (Bits == 8) return c ^ ((c >> 2) & 3);
  else return c;
}

// The warp's B for one group row of a tile: [k-step][lane] fragment pairs (b0, b1); a warp has one per
// row of its tiles (two for groups of 16 tokens). A k-step's entries are 36 apart, not 32, so that the
// builders' writes (lane (j, t) to entries 36j + 8h + t) spread over all banks.
template <int D>
struct alignas(16) Scratch {
  static constexpr int kPitch = 36;
  uint2 b[D / 16][kPitch];
};

// The warp's int8 B for one group row of a tile: column n (part n; 3 to 7 stay zero) in w[n], lane
// (g, t) reading words 8t + 2j and 8t + 2j + 1 of column g for k-step j (channels 32j + 4t .. + 3 and
// 32j + 16 + 4t .. + 3). A pitch of 34 words puts each half-warp's 8-byte reads on distinct banks, as
// the builders' writes (builder_word).
struct alignas(16) ByteScratch {
  static constexpr int kPitch = 34;
  std::uint32_t w[8][kPitch];
};

// Where builder lane l's word (channels 4l .. 4l + 3) sits in a column of ByteScratch.
__device__ __forceinline__ int builder_word(int l) { return 8 * (l & 3) + 2 * (l >> 3) + ((l >> 2) & 1); }

template <int Bits, int D, int Heads>
using ScratchFor = std::conditional_t<kInt8<Bits, Heads>, ByteScratch, Scratch<D>>;

// The int8 B's fixed point: hi, mid and lo s8 bytes, x = 65536 hi + 256 mid + lo.
inline constexpr int kFixed24 = 127 * 65536 + 127 * 256 + 127;

// The low bytes of four ints, in order.
__device__ __forceinline__ std::uint32_t low_bytes(int x0, int x1, int x2, int x3) {
  return __byte_perm(__byte_perm(x0, x1, 0x0040), __byte_perm(x2, x3, 0x0040), 0x5410);
}

// 2^e for |e| <= 126, exact.
__device__ __forceinline__ float pow2(int e) { return __int_as_float((127 + e) << 23); }

// fp16 value e (0..3) of four held in a uint2.
__device__ __forceinline__ std::uint16_t half_at(uint2 v, int e) {
  const std::uint32_t w = e < 2 ? v.x : v.y;
  return static_cast<std::uint16_t>(e & 1 ? w >> 16 : w & 0xffffu);
}

// Each lane's v[0 .. Heads) summed over the warp, with head t = lane % 4 left in lane's result (for
// t < Heads): halving exchanges over the lane bits that name the head, then a plain butterfly.
template <int Heads>
__device__ __forceinline__ float head_sums(const float (&v)[Heads], int lane) {
  float x;
  int off = 1;
  if constexpr (Heads == 4) {
    const bool up = lane & 2;  // keeps heads 2, 3
    float w[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) w[i] = (up ? v[2 + i] : v[i]) + __shfl_xor_sync(0xffffffffu, up ? v[i] : v[2 + i], 2);
    const bool odd = lane & 1;
    x = (odd ? w[1] : w[0]) + __shfl_xor_sync(0xffffffffu, odd ? w[0] : w[1], 1);
    off = 4;
  } else if constexpr (Heads == 2) {
    const bool odd = lane & 1;
    x = (odd ? v[1] : v[0]) + __shfl_xor_sync(0xffffffffu, odd ? v[0] : v[1], 1);
    off = 2;
  } else {
    x = v[0];
  }
  for (; off < 32; off <<= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Heads: the bucket (1, 2 or 4) of the GQA group, which sizes the registers kept per head.
// (No minimum of resident blocks: capping the registers at 80 or 72 for 6 or 7 blocks spilled and ran
// 20-30% slower on the H100.)
// The first Count tiles of this warp (codes, and the scale and asym zero rows of their group rows)
// named to L2 before the wait, when the caller asks (ScoresParams::prefetch_first_units), as the inner
// keys' ring does: kernel arguments only, lines holding the tiles' bytes only (prefetch_lines).
template <int Bits, int D, int Count>
__device__ __forceinline__ void prefetch_warp_tiles(const ScoresParams& p, int per_block) {
  const RegionShape& s = p.keys.shape;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int shift = 31 - __clz(s.group_size), rows = s.tokens >> shift, tiles = (s.tokens + 31) / 32;
  const int first = blockIdx.x * per_block, last = min(tiles, first + per_block);
  const RegionArrays<std::uint16_t> a = argument_arrays<std::uint16_t>(p.keys, blockIdx.y);
  // Bytes [from, from + bytes) of an array starting at `array`.
  const auto lines = [&](const void* array, long long from, long long bytes) { prefetch_lines(static_cast<const char*>(array) + from, bytes, lane, 32); };
#pragma unroll
  for (int j = 0; j < Count; ++j) {
    const int tile = first + warp + kWarps * j;
    if (tile >= last) break;
    lines(a.codes, static_cast<long long>(tile) * D * Bits * 4, D * Bits * 4);
    const int row0 = (tile * 32) >> shift, row1 = min(rows, ((tile + 1) * 32 + (1 << shift) - 1) >> shift);
    if (row1 > row0) {
      const long long from = static_cast<long long>(row0) * D * 2, bytes = static_cast<long long>(row1 - row0) * D * 2;
      lines(a.scales, from, bytes);
      if (s.mode == GroupMode::asym) lines(a.zeros, from, bytes);
    }
  }
}

template <int Bits, int D, int Heads, int Prefetch>
__global__ void __launch_bounds__(kThreads) scores_outer_mma_kernel(ScoresParams p, int per_block) {
  if constexpr (Prefetch > 0) prefetch_warp_tiles<Bits, D, Prefetch>(p, per_block);
  wait_for_prior_kernels();
  using TileT = Tile<Bits, D>;
  using ScratchT = ScratchFor<Bits, D, Heads>;
  constexpr int kSteps = D / 16;  // fp16 k-steps; int8 ones take 32 channels
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  TileT* stages = reinterpret_cast<TileT*>(smem) + kStages * warp;

  const RegionShape s = p.keys.shape;
  const int r = blockIdx.y, heads = p.group;
  const int shift = 31 - __clz(s.group_size);  // group rows are 2^shift tokens
  const int rows = s.tokens >> shift, tiles = (s.tokens + 31) / 32;
  const int first = blockIdx.x * per_block, last = min(tiles, first + per_block);
  const int rows_per_tile = shift == 4 ? 2 : 1;
  ScratchT* scratch = reinterpret_cast<ScratchT*>(smem + kWarps * kStages * sizeof(TileT)) + warp * rows_per_tile;
  const float offset = static_cast<float>(packed::sym_offset(Bits, s.twos));
  const RegionArrays<std::uint16_t> arrays = region_arrays<std::uint16_t>(p.keys, r);
  const std::uint32_t* codes = arrays.codes;
  const std::uint16_t *scales = arrays.scales, *zeros = arrays.zeros;
  const std::uint32_t* zero_base = arrays.zero_base;
  const float* sigma = p.token_scale ? p.token_scale + static_cast<long long>(r) * s.tokens : nullptr;
  float* scores = p.scores + static_cast<long long>(r) * p.group * s.tokens;

  // Builder lane l: q of channels 4l + e for each head, and their largest |q| (for the fp16 B).
  const bool builder = lane < D / 4;
  float q[Heads][4], q_max[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    q_max[e] = 0.0f;
#pragma unroll
    for (int h = 0; h < Heads; ++h) {
      q[h][e] = builder && h < heads ? __ldg(p.queries + (static_cast<long long>(r) * p.group + h) * D + 4 * lane + e) : 0.0f;
      q_max[e] = fmaxf(q_max[e], fabsf(q[h][e]));
    }
  }

  // B's columns past the group's heads stay zero.
  for (int i = lane; i < rows_per_tile * static_cast<int>(sizeof(ScratchT) / 16); i += 32) reinterpret_cast<uint4*>(scratch)[i] = make_uint4(0, 0, 0, 0);

  // Starts the copy of tile `tile`'s codes into `stage` (16-byte pieces: a 4-bit chunk, half an 8-bit
  // one, two 2-bit ones).
  const auto copy_tile = [&](int tile, TileT& stage) {
    constexpr int kPieces = D * Bits / 4;
    const char* src = reinterpret_cast<const char*>(codes + static_cast<long long>(tile) * D * Bits);
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(stage.codes));
#pragma unroll
    for (int i = lane; i < kPieces; i += 32) {
      const int at = Bits == 8 ? 32 * chunk_slot<Bits>(i >> 1) + 16 * (i & 1) : Bits == 4 ? 16 * chunk_slot<Bits>(i) : 16 * i;
      copy16(dst + at, src + 16 * static_cast<long long>(i));
    }
    copy_commit();
  };
  // The builder lane's four scales (and asym zero points) of each group row of a tile, and the rows'
  // first hybrid zero points, loaded a tile ahead. Rows start on 8 bytes (2D bytes apart), so one
  // 8-byte load takes four where the region does.
  const bool meta8 = ((reinterpret_cast<std::uintptr_t>(scales) | (s.mode == GroupMode::asym ? reinterpret_cast<std::uintptr_t>(zeros) : 0)) & 7u) == 0;
  const auto load4 = [&](const std::uint16_t* at) {
    if (meta8) return __ldg(reinterpret_cast<const uint2*>(at));
    return make_uint2(__ldg(at) | (static_cast<std::uint32_t>(__ldg(at + 1)) << 16), __ldg(at + 2) | (static_cast<std::uint32_t>(__ldg(at + 3)) << 16));
  };
  uint2 scale_next[2] = {}, zero_next[2] = {};
  std::uint32_t base_next[2] = {0u, 0u};
  const auto fetch = [&](int tile) {
    if (tile >= last) return;
    const int row0 = (tile * 32) >> shift;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      if (k >= rows_per_tile || row0 + k >= rows) break;
      const long long at = static_cast<long long>(row0 + k) * D + 4 * lane;
      if (builder) scale_next[k] = load4(scales + at);
      if (builder && s.mode == GroupMode::asym) zero_next[k] = load4(zeros + at);
      if (s.mode == GroupMode::hybrid) base_next[k] = __ldg(zero_base + row0 + k);
    }
  };

  const std::conditional_t<kInt8<Bits, Heads>, ByteRows, LaneDecode<Bits>> dec(g);  // the lane's decode, int8 or fp16
  int range_exp = kMaxRange;  // fp16 B = q |s| 2^range_exp; only ever lowered
#pragma unroll
  for (int k = 0; k < kStages - 1; ++k) {
    if (first + warp + k * kWarps < last) copy_tile(first + warp + k * kWarps, stages[k]);
    else copy_commit();
  }
  fetch(first + warp);
  unsigned i = 0;
  for (int tile = first + warp; tile < last; tile += kWarps, ++i) {
    ring_refill<kStages>(i, tile + (kStages - 1) * kWarps < last, stages, [&](TileT& stage) { copy_tile(tile + (kStages - 1) * kWarps, stage); });
    const uint2 scale_now[2] = {scale_next[0], scale_next[1]}, zero_now[2] = {zero_next[0], zero_next[1]};
    const std::uint32_t base[2] = {base_next[0], base_next[1]};
    fetch(tile + kWarps);
    const int row0 = (tile * 32) >> shift, live_rows = min(rows_per_tile, rows - row0);

    // B of each live group row: range, zero points' sums (head t's in konst), fragment entries.
    float konst[2] = {0.0f, 0.0f};
    float row_inv[2] = {1.0f, 1.0f};  // int8 B: what turns its products back
    int row_exp[2] = {0, 0};          // fp16 B: the range each row's B was built at
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      if (k >= live_rows) break;
      float mag[4], vmax = 0.0f;
      bool sign[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const std::uint16_t raw = half_at(scale_now[k], e);
        mag[e] = magnitude(raw);
        sign[e] = sign_bit(raw);
        vmax = fmaxf(vmax, q_max[e] * mag[e]);
      }
      if constexpr (!kInt8<Bits, Heads>) {
        // B must stay under 2^15 at the current range; where it would not, lower the range to the row's.
        if (__any_sync(0xffffffffu, vmax * pow2(range_exp) >= 32768.0f)) {
#pragma unroll
          for (int off = 16; off > 0; off >>= 1) vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, off));
          range_exp = min(range_exp, max(-kMaxRange, 14 - ilogbf(vmax)));
        }
      }
      const float range = pow2(range_exp);  // the fp16 B's
      row_exp[k] = range_exp;

      // Zero points. Hybrid: channel c's compact zero follows those of the row's asymmetric channels
      // below it: the lower lanes' and this lane's slots below e. (Counting the lower lanes' with
      // warp_exclusive_sum instead of four ballots gives the same; that build ran the paper asym keys
      // slower on the H100, 30.8 against 28.6 us, serving 128 against 127 us, so the ballots stay.)
      float zero[4];
      if (s.mode == GroupMode::hybrid) {
        int count = 0;
#pragma unroll
        for (int e = 0; e < 4; ++e) count += __popc(__ballot_sync(0xffffffffu, sign[e]) & ((1u << lane) - 1u));
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          zero[e] = sign[e] ? plain(__ldg(zeros + base[k] + count)) : -offset * mag[e];
          count += sign[e];
        }
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) zero[e] = s.mode == GroupMode::asym ? plain(half_at(zero_now[k], e)) : -offset * mag[e];
      }
      float part[Heads];
#pragma unroll
      for (int h = 0; h < Heads; ++h) {
        part[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < 4; ++e) part[h] = fmaf(q[h][e], zero[e], part[h]);
      }
      konst[k] = head_sums<Heads>(part, lane);

      if constexpr (kInt8<Bits, Heads>) {
        // 24-bit fixed point relative to the row's largest |q s|: non-negative floats order as their
        // bits, so one REDUX finds it. x * range stays below 2^24, where floats hold every integer.
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = q[0][e] * mag[e];  // |v| <= q_max mag: vmax is the lane's largest
        vmax = __uint_as_float(__reduce_max_sync(0xffffffffu, __float_as_uint(vmax)));
        const float fixed = vmax > 0.0f ? __fdividef(static_cast<float>(kFixed24), vmax) : 1.0f;
        row_inv[k] = vmax > 0.0f ? vmax * (1.0f / kFixed24) : 1.0f;
        if (builder) {
          int x[4], mid[4], hi[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            // x = 65536 hi + 256 mid + lo, each part in s8 (s8_upper).
            x[e] = max(-kFixed24, min(kFixed24, __float2int_rn(v[e] * fixed)));
            mid[e] = s8_upper(x[e]), hi[e] = s8_upper(mid[e]);
          }
          const int at = builder_word(lane);
          scratch[k].w[0][at] = low_bytes(hi[0], hi[1], hi[2], hi[3]);
          scratch[k].w[1][at] = low_bytes(mid[0], mid[1], mid[2], mid[3]);
          scratch[k].w[2][at] = low_bytes(x[0], x[1], x[2], x[3]);
        }
      } else if (builder) {
#pragma unroll
        for (int h = 0; h < Heads; ++h) {
          if (h >= heads) break;
          __half hi[4], lo[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float v = q[h][e] * mag[e] * range;
            hi[e] = __float2half_rn(v);
            lo[e] = __float2half_rn(v - __half2float(hi[e]));
          }
          uint2* row = scratch[k].b[g];
          row[8 * h + t] = make_uint2(mma::pack_half2(hi[0], hi[1]), mma::pack_half2(hi[2], hi[3]));
          row[8 * h + 4 + t] = make_uint2(mma::pack_half2(lo[0], lo[1]), mma::pack_half2(lo[2], lo[3]));
        }
      }
    }
    const TileT& stage = ring_landed<kStages>(i, stages);

    // Both m-tiles over the k-steps, then each row's dot product in the fixed point's or the range's
    // scale (dots[m][0]: row g, [1]: row g + 8). A dead m-tile (the second half of a last tile of
    // 16-token rows) is computed and not stored.
    float acc[2][4] = {};   // fp16 form: the accumulators
    float dots[2][2] = {};  // int8 form: each row's dot product, scaled back
    if constexpr (kInt8<Bits, Heads>) {
      int acc8[2][4] = {};
#pragma unroll
      for (int j = 0; j < D / 32; ++j) {
        // Chunks 32j + 4t .. + 3 (k-slots 4t + e) and 32j + 16 + 4t .. + 3 (16 + 4t + e): 32 contiguous
        // bytes each, word m of chunk e in .x/.z of the pair's first or second uint4 by m.
        const uint4* lo4 = reinterpret_cast<const uint4*>(stage.codes + (32 * j + 4 * t) * 2);
        const uint4* hi4 = reinterpret_cast<const uint4*>(stage.codes + (32 * j + 16 + 4 * t) * 2);
        const uint4 l0 = lo4[0], l1 = lo4[1], h0 = hi4[0], h1 = hi4[1];
        const uint2 b0 = *reinterpret_cast<const uint2*>(&scratch[0].w[g][8 * t + 2 * j]);
        const uint2 b1 = rows_per_tile == 2 ? *reinterpret_cast<const uint2*>(&scratch[1].w[g][8 * t + 2 * j]) : b0;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const uint2 b = m == 0 ? b0 : b1;
          const std::uint32_t lo = m == 0 ? dec.gather(l0.x, l0.z, l1.x, l1.z) : dec.gather(l0.y, l0.w, l1.y, l1.w);
          const std::uint32_t hi = m == 0 ? dec.gather(h0.x, h0.z, h1.x, h1.z) : dec.gather(h0.y, h0.w, h1.y, h1.w);
          const std::uint32_t a[4] = {lo & dec.mask_g, lo & dec.mask_g8, hi & dec.mask_g, hi & dec.mask_g8};
          planes::imma(acc8[m], a, b.x, b.y);
        }
      }
      // Lane (g, 0) holds columns 0 and 1 (hi, mid), lane (g, 1) column 2 (lo): each converts its part
      // (exact: |acc| < 2^22), the quad's pair adds them, and lane (g, 0) keeps the sum.
      const float w_first = t == 0 ? 65536.0f : 1.0f;
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        const float inv = m == 1 && rows_per_tile == 2 ? row_inv[1] : row_inv[0];
#pragma unroll
        for (int row = 0; row < 2; ++row) {
          float part = fmaf(static_cast<float>(acc8[m][2 * row]), w_first, 256.0f * static_cast<float>(acc8[m][2 * row + 1]));
          part += __shfl_xor_sync(0xffffffffu, part, 1);
          dots[m][row] = part * (inv * pow2(-(row == 0 ? dec.pos_g : dec.pos_g8)));
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < kSteps; ++j) {
        std::uint32_t w[4][2];
        if constexpr (Bits == 2) {  // channels 16j + 4t .. + 3: 32 contiguous bytes
          const uint4* chunks = reinterpret_cast<const uint4*>(stage.codes + (16 * j + 4 * t) * 2);
          const uint4 v0 = chunks[0], v1 = chunks[1];
          w[0][0] = v0.x, w[0][1] = v0.y, w[1][0] = v0.z, w[1][1] = v0.w;
          w[2][0] = v1.x, w[2][1] = v1.y, w[3][0] = v1.z, w[3][1] = v1.w;
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const std::uint32_t* chunk = stage.codes + chunk_slot<Bits>(16 * j + 4 * t + e) * Bits + dec.word;
            w[e][0] = chunk[0], w[e][1] = chunk[kWordsPerMTile<Bits>];
          }
        }
        const uint2 b0 = scratch[0].b[j][lane];
        const uint2 b1 = rows_per_tile == 2 ? scratch[1].b[j][lane] : b0;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const uint2 b = m == 0 ? b0 : b1;
          std::uint32_t a[4];
          dec.decode(w[0][m], w[1][m], a[0], a[1]);
          dec.decode(w[2][m], w[3][m], a[2], a[3]);
          mma::mma(acc[m], a, b.x, b.y);
        }
      }
    }

    // Lane (g, t): head t's scores of tokens 16m + 2g (row g) and 16m + 2g + 1 (row g + 8).
    if (t < heads) {
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        const bool second_row = m == 1 && rows_per_tile == 2;
        if (second_row && live_rows < 2) break;
        const float kt = second_row ? konst[1] : konst[0];
        const int tok = tile * 32 + 16 * m + 2 * g;
        float v0, v1;
        if constexpr (kInt8<Bits, Heads>) {
          v0 = dots[m][0] + kt, v1 = dots[m][1] + kt;
        } else {
          const int exp = second_row ? row_exp[1] : row_exp[0];
          const float w_g = pow2(-exp - dec.pos_g), w_g8 = pow2(-exp - dec.pos_g8);
          v0 = fmaf(acc[m][0] + acc[m][1], w_g, kt);
          v1 = fmaf(acc[m][2] + acc[m][3], w_g8, kt);
        }
        if (sigma) v0 *= __ldg(sigma + tok), v1 *= __ldg(sigma + tok + 1);
        float* out = scores + static_cast<long long>(t) * s.tokens + tok;
        out[0] = v0;
        out[1] = v1;
      }
    }
  }
  copy_wait<0>();
}

template <int Bits, int D, int Heads, int Prefetch>
cudaError_t launch(const ScoresParams& p, cudaStream_t stream) {
  const auto kernel = scores_outer_mma_kernel<Bits, D, Heads, Prefetch>;
  // Rows of B per warp: two for groups of 16 tokens.
  const std::size_t smem = kWarps * (kStages * sizeof(Tile<Bits, D>) + (p.keys.shape.group_size == 16 ? 2 : 1) * sizeof(ScratchFor<Bits, D, Heads>));
  // As many resident blocks as the registers allow: the most shared memory for the carveout.
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kThreads, smem, info, /*max_shared=*/true));
  // One wave of resident blocks over all regions, each a whole number of warp rounds of tiles.
  const int tiles = (p.keys.shape.tokens + 31) / 32, want = info.wave_per_region(p.keys.regions);
  const int per_block = std::max(kWarps, (tiles + want * kWarps - 1) / (want * kWarps) * kWarps);
  const dim3 grid(static_cast<unsigned>((tiles + per_block - 1) / per_block), static_cast<unsigned>(p.keys.regions));
  return launch_kernel(kernel, grid, dim3(kThreads), smem, stream, p, per_block);
}

}  // namespace

bool scores_outer_mma_supported(const DeviceRegions& keys, int group) {
  return scores_outer_supported(keys.shape, group) && outer_mma::takes(keys, group);
}

cudaError_t scores_outer_mma(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  if (!scores_outer_mma_supported(p.keys, p.group) || p.keys.regions < 1) return cudaErrorInvalidValue;
  if (s.tokens == 0) return cudaSuccess;
  KVQ_DISPATCH_OUTER_MMA(s, p.group, B, D, H, return p.prefetch_first_units ? launch<B, D, H, kPrefetchTiles>(p, stream) : launch<B, D, H, 0>(p, stream);)
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
