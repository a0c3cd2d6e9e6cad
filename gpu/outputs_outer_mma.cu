// Outputs over channel-axis values (the outer layout: KIVI's per-token values) on tensor cores.
//
// out[h][c] = sum_t p_ht sigma_t (f_tc |s_tg| + z_tg) for the group g of channel c. The group spans
// the output, not the reduction, so its scale cannot leave the sum over tokens: it goes into B. In
// each m16n8k16 tile A holds the codes of 16 channels of one group (rows) over 16 tokens (k), B the
// tokens' p sigma |s| for that group as fp16 hi + lo parts, head h in columns 2h, 2h+1 (up to 4 heads
// share an mma). The zero points' part, sum_t p sigma z per (head, group), runs on CUDA cores.
//
// Decode (gpu/outer_mma.cuh). A token's codes run along channels, the fragment wants two tokens per
// register: lane (g, t) owns channels 16i + 2g and 16i + 2g + 1 of m-tile i (rows g and g + 8), one
// byte of the token's row, and one PRMT gathers it from two tokens. So one PRMT, two LOP3 and two
// HSUB2 make four codes.
//
// 2-bit codes and one query head: int8 tensor cores (m16n8k32, every product exact in s32), one mma an
// m-tile and stretch. Lane t's k-slots 4t + e and 16 + 4t + e are tokens t + 4e and 16 + t + 4e; three
// PRMTs gather the lane's byte of four tokens' rows and one AND a row keeps its field (ByteRows), so 6
// PRMTs and 4 ANDs make 32 codes a lane. B is p sigma |s| as 22-bit fixed point at the warp's range
// (below), its mid, lo and hi s8 bytes in columns 0, 1, 2: lane t = 0's accumulator pair reads out as
// 256 mid + lo, lane t = 1's as 256 hi, both within s32 over kFlush stretches.
//
// Range. Per warp, B is scaled by a power of two R that brings the largest p sigma |s| seen so far
// near 2^14 (fp16: cannot overflow, and only entries 2^28 below the largest lose bits) or 2^21 (int8:
// fixed point, so an entry 2^k below the largest keeps 22 - k bits). When a stretch raises the
// largest, the accumulators are flushed first (read out at the old R). They are also flushed every
// kFlush stretches, which bounds how far the tensor cores' truncating accumulation runs
// (H100, 8k tokens per warp: NMSE up to 5e-12 flushing every stretch, 1e-10 every 8, 1e-8 every 64).
//
// Each warp streams 32-token stretches (one hybrid zero-block) through two cp.async stages in shared
// memory, with no block barrier: codes (rows padded by 16 bytes, so that a load's four tokens fall
// on distinct banks), scales and asym zero points. Lane l builds token l's B values into the warp's
// scratch in fragment order; the probabilities, token scales and hybrid zero bases of the next
// stretch are loaded a stretch ahead into registers.
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
#include "gpu/outer_terms.cuh"
#include "gpu/outputs_outer_mma.h"
#include "gpu/pipeline.cuh"
#include "gpu/region_arrays.cuh"
#include "gpu/reduce.cuh"

namespace kvq::gpu {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kStretch = 32;  // tokens per stretch: one zero-block of the channel axis, two k-steps
constexpr int kFlush = 8;     // stretches between reads of the accumulators
using outer_mma::ByteRows;
using outer_mma::kInt8;
using outer_mma::kWordsPerMTile;
using outer_mma::LaneDecode;
using outer_mma::s8_upper;

// A stretch in shared memory. Scales and zero points are copied from wherever they start (copy_async:
// up to 15 bytes before them, hence the headroom).
template <int Bits, int D>
struct alignas(16) Stage {
  static constexpr int kWords = D * Bits / 32;  // words per token row
  static constexpr int kPitch = kWords + 4;     // a load's four rows (one per t) on distinct banks
  static constexpr int kMetaBytes = kStretch * (D / 16) * 2 + 16;
  std::uint32_t codes[kStretch][kPitch];
  unsigned char scales[kMetaBytes];
  unsigned char zeros[kMetaBytes];
};

// The warp's B for one stretch: [k-step][group][lane] fragment pairs (b0, b1), each two fp16 tokens;
// the second k-step is shifted by 32 bytes so that the writes of lanes 16..31 miss those of 0..15.
// The int8 form uses k-step 0 alone, each pair four s8 tokens (int8_byte).
// With SharedTotals, also the accumulators' running totals, [m-tile][row g, g + 8][lane]: added to every
// kFlush stretches, so for GQA groups they wait here rather than hold 2 D / 16 registers (which spilled).
template <int D, int Groups, bool SharedTotals>
struct alignas(16) Scratch {
  static constexpr int kStepPitch = Groups * 32 + 4;  // in 8-byte entries
  uint2 b[2 * kStepPitch];
  float total[SharedTotals ? D / 16 : 1][2][32];
};
template <int Heads>
inline constexpr bool kSharedTotals = Heads >= 2;

// The int8 form's byte of token l (k-slot 4 (l % 4) + (l / 4) % 4 + 16 (l / 16)) in column n of group k's
// fragment pairs (entry 32 k + 4 n + l % 4, reader lane (n, l % 4)). A store's lanes write 8 distinct words.
__device__ __forceinline__ int int8_byte(int k, int n, int l) { return (32 * k + 4 * n + (l & 3)) * 8 + (l >> 4) * 4 + ((l >> 2) & 3); }

// Groups: a token's groups (D / group size), so that the per-token metadata loops have fixed trip counts.
// Heads: the bucket (1, 2 or 4) of the GQA group, which sizes the registers kept per head. Scores: probs
// holds raw scores, weighed as e^(score_scale s - m) with each row's max m from p.row_stats (the outer
// attention); its own instantiation, so that the plain GEMV holds no register for it (its registers are
// tight: 4 more cost the serving shape 5% when its totals still sat in registers).
template <int Bits, int D, int Groups, int Heads, bool Scores>
__global__ void __launch_bounds__(kThreads, 4) outputs_outer_mma_kernel(OutputsParams p, int per_split) {
  wait_for_prior_kernels();
  using StageT = Stage<Bits, D>;
  using ScratchT = Scratch<D, Groups, kSharedTotals<Heads>>;
  constexpr int kMTiles = D / 16, kWords = StageT::kWords;
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  StageT* stages = reinterpret_cast<StageT*>(smem) + 2 * warp;
  ScratchT& scratch = reinterpret_cast<ScratchT*>(smem + kWarps * 2 * sizeof(StageT))[warp];
  __shared__ float red[kWarps][Heads][D];

  const RegionShape s = p.values.shape;
  const int r = blockIdx.y, heads = p.group;
  constexpr int kGroupShift = Groups == D / 16 ? 4 : Groups == D / 32 ? 5 : Groups == D / 64 ? 6 : 7;  // log2 of the group size
  const int stretches = (s.tokens + kStretch - 1) / kStretch;
  const int first = blockIdx.x * per_split, last = min(stretches, first + per_split);
  const float offset = static_cast<float>(packed::sym_offset(Bits, s.twos));
  const RegionArrays<std::uint16_t> arrays = region_arrays<std::uint16_t>(p.values, r);
  const std::uint32_t* codes = arrays.codes;
  const std::uint16_t *scales = arrays.scales, *zeros = arrays.zeros;
  const std::uint32_t* zero_base = arrays.zero_base;
  const float* probs = p.probs + static_cast<long long>(r) * p.group * s.tokens;
  const float* sigma = p.token_scale ? p.token_scale + static_cast<long long>(r) * s.tokens : nullptr;

  // B's columns past the group's heads stay zero, and shared totals start at zero. Lanes clear one
  // another's entries, so the warp syncs before any lane reads its own (a warp with no stretch reads
  // its totals right away).
  for (int i = lane; i < static_cast<int>(sizeof(ScratchT) / 16); i += 32) reinterpret_cast<uint4*>(&scratch)[i] = make_uint4(0, 0, 0, 0);
  __syncwarp();

  // Starts the copy of stretch st into `stage`: live rows of codes, live tokens' scales (and zeros).
  // A stretch's metadata starts 64 * Groups bytes after the one before, so it sits at the same offset
  // within its first 16 bytes in every stage (scale_at, zero_at). Where both arrays start on 16 bytes,
  // a whole stretch is fixed 16-byte pieces (no loop over a live count, no tail).
  const int scale_at = static_cast<int>(reinterpret_cast<std::uintptr_t>(scales) & 15u);
  const int zero_at = static_cast<int>(reinterpret_cast<std::uintptr_t>(zeros) & 15u);
  const bool meta_on16 = scale_at == 0 && (s.mode != GroupMode::asym || zero_at == 0);
  const auto copy_stretch = [&](int st, StageT& stage) {
    const int live = min(kStretch, s.tokens - st * kStretch);
    constexpr int kRowPieces = kWords / 4, kMetaPieces = kStretch * Groups * 2 / 16;
    const char* src = reinterpret_cast<const char*>(codes + static_cast<long long>(st) * kStretch * kWords);
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(&stage));
    const long long meta0 = static_cast<long long>(st) * kStretch * Groups;
    if (live == kStretch && meta_on16) {
#pragma unroll
      for (int j = 0; j < kStretch * kRowPieces / 32; ++j) {
        const int i = lane + 32 * j;
        copy16(dst + (i / kRowPieces) * StageT::kPitch * 4 + 16 * (i % kRowPieces), src + 16 * i);
      }
      if (lane < kMetaPieces) {
        copy16(static_cast<unsigned>(__cvta_generic_to_shared(stage.scales)) + 16 * lane, scales + meta0 + 8 * lane);
        if (s.mode == GroupMode::asym) copy16(static_cast<unsigned>(__cvta_generic_to_shared(stage.zeros)) + 16 * lane, zeros + meta0 + 8 * lane);
      }
    } else {
      for (int i = lane; i < live * kRowPieces; i += 32)
        copy16(dst + (i / kRowPieces) * StageT::kPitch * 4 + 16 * (i % kRowPieces), src + 16 * static_cast<long long>(i));
      const long long bytes = 2LL * live * Groups;
      copy_async(stage.scales, scales + meta0, bytes, lane, 32);
      if (s.mode == GroupMode::asym) copy_async(stage.zeros, zeros + meta0, bytes, lane, 32);
    }
    copy_commit();
  };

  constexpr bool kBytes = kInt8<Bits, Heads>;
  const std::conditional_t<kBytes, ByteRows, LaneDecode<Bits>> dec(g);  // the lane's decode, int8 or fp16
  std::conditional_t<kBytes, int, float> acc[kMTiles][4] = {};
  float konst[Heads][Groups] = {};
  int range_exp = 126;  // B = value * 2^range_exp; only ever lowered
  // Row g (0) or g + 8 (1) of m-tile i's running total: registers for one head, the scratch for more.
  float total_regs[kSharedTotals<Heads> ? 1 : kMTiles][2] = {};
  const auto total = [&](int i, int row) -> float& {
    if constexpr (kSharedTotals<Heads>) return scratch.total[i][row][lane];
    else return total_regs[i][row];
  };
  // Reads the accumulators out at the current range (undoing the rows' weights 2^pos and B's
  // 2^range_exp) into the totals and clears them. Int8: lanes (g, 0) and (g, 1) swap a row's part, so
  // that the first totals row g and the second row g + 8, in total(i, 0).
  const auto flush = [&]() {
    if constexpr (kBytes) {
      const float w_part = t == 1 ? 256.0f : 1.0f;
      const float w_row = exp2f(static_cast<float>(-(t == 0 ? dec.pos_g : dec.pos_g8) - range_exp));
#pragma unroll
      for (int i = 0; i < kMTiles; ++i) {
        const float row_g = static_cast<float>(256 * acc[i][0] + acc[i][1]) * w_part;
        const float row_g8 = static_cast<float>(256 * acc[i][2] + acc[i][3]) * w_part;
        const float other = __shfl_xor_sync(0xffffffffu, t == 0 ? row_g8 : row_g, 1);
        total(i, 0) = fmaf((t == 0 ? row_g : row_g8) + other, w_row, total(i, 0));
        acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0;
      }
    } else {
      const float w_g = exp2f(static_cast<float>(-dec.pos_g - range_exp)), w_g8 = exp2f(static_cast<float>(-dec.pos_g8 - range_exp));
#pragma unroll
      for (int i = 0; i < kMTiles; ++i) {
        total(i, 0) = fmaf(acc[i][0] + acc[i][1], w_g, total(i, 0));
        total(i, 1) = fmaf(acc[i][2] + acc[i][3], w_g8, total(i, 1));
        acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
      }
    }
  };

  // Scores: each head's softmax max.
  float m_row[Scores ? Heads : 1];
#pragma unroll
  for (int h = 0; h < (Scores ? Heads : 0); ++h) m_row[h] = h < heads ? p.row_stats[2 * (static_cast<long long>(r) * heads + h)] : 0.0f;
  // What the next stretch needs from global memory beyond its stage, loaded a stretch ahead (raw: the
  // weights are taken when the stretch starts, so that nothing waits on the loads here).
  float p_next[Heads], sigma_next = 1.0f;
  std::uint32_t base_next = 0;
  const auto fetch = [&](int st) {
    const int tok = st * kStretch + lane;
    const bool live = st < last && tok < s.tokens;
#pragma unroll
    for (int h = 0; h < Heads; ++h) p_next[h] = live && h < heads ? __ldg(probs + static_cast<long long>(h) * s.tokens + tok) : 0.0f;
    sigma_next = live && sigma ? __ldg(sigma + tok) : 1.0f;
    base_next = st < last && s.mode == GroupMode::hybrid ? __ldg(zero_base + st) : 0u;
  };

  if (first + warp < last) copy_stretch(first + warp, stages[0]);
  fetch(first + warp);
  unsigned i = 0;
  int since_flush = 0;
  for (int st = first + warp; st < last; st += kWarps, ++i) {
    ring_refill<2>(i, st + kWarps < last, stages, [&](StageT& stage) { copy_stretch(st + kWarps, stage); });
    float pv[Heads];
    const float sig = sigma_next;
    const std::uint32_t base = base_next;
#pragma unroll
    for (int h = 0; h < Heads; ++h) {
      if constexpr (Scores) pv[h] = h < heads && st * kStretch + lane < s.tokens ? outer::weight(p, p_next[h], m_row[h]) * sig : 0.0f;
      else pv[h] = p_next[h] * sig;
    }
    fetch(st + kWarps);
    const StageT& stage = ring_landed<2>(i, stages);

    // Token l of the stretch: its groups' |scale|, mode bits and the largest |p sigma| |s|.
    const int tok = st * kStretch + lane;
    const bool live = tok < s.tokens;
    const std::uint16_t* my_scales = reinterpret_cast<const std::uint16_t*>(stage.scales + scale_at) + lane * Groups;
    const std::uint16_t* my_zeros = reinterpret_cast<const std::uint16_t*>(stage.zeros + zero_at) + lane * Groups;
    float mag[Groups];
    std::uint32_t mask = 0;
    float smax = 0.0f;
#pragma unroll
    for (int k = 0; k < Groups; ++k) {
      const std::uint16_t raw = live ? my_scales[k] : std::uint16_t{0};
      mag[k] = magnitude(raw);
      mask |= static_cast<std::uint32_t>(sign_bit(raw)) << k;
      smax = fmaxf(smax, mag[k]);
    }
    float pmax = 0.0f;
#pragma unroll
    for (int h = 0; h < Heads; ++h) pmax = fmaxf(pmax, fabsf(pv[h]));
    // The warp's largest p sigma |s|: non-negative, so its bits order as the values do (one REDUX).
    const std::uint32_t vmax = __reduce_max_sync(0xffffffffu, __float_as_uint(pmax * smax));
    if (vmax != 0u) {
      const int wanted = (kBytes ? 21 : 14) - (static_cast<int>(vmax >> 23) - 127);  // a subnormal reads as 2^-127: wanted stays above range_exp
      if (wanted < range_exp) flush(), range_exp = wanted, since_flush = 0;
    }
    const float range = __uint_as_float(static_cast<std::uint32_t>(range_exp + 127) << 23);  // range_exp in [-113, 126]

    // B values into the scratch (token l: k-step l / 16, lane column 4 n + l % 4, slot (l % 16) / 4)
    // and the zero points' sums: one copy per group mode behind a uniform branch, so that no copy
    // carries another mode's work.
    std::uint16_t* out = reinterpret_cast<std::uint16_t*>(scratch.b + (lane >> 4) * ScratchT::kStepPitch) + (lane & 3) * 4 + ((lane & 15) >> 2);
    const auto build_b = [&](auto mode) {
      constexpr GroupMode kMode = decltype(mode)::value;
      // Hybrid: token l's first compact zero point, after the block's earlier tokens' (a warp scan).
      long long compact = 0;
      if constexpr (kMode == GroupMode::hybrid) compact = base + warp_exclusive_sum(__popc(mask));
#pragma unroll
      for (int k = 0; k < Groups; ++k) {
        float zero = -offset * mag[k];
        if constexpr (kMode == GroupMode::asym) zero = live ? plain(my_zeros[k]) : 0.0f;
        if constexpr (kMode == GroupMode::hybrid) {
          if ((mask >> k) & 1u) zero = plain(__ldg(zeros + compact + __popc(mask & ((1u << k) - 1u))));
        }
#pragma unroll
        for (int h = 0; h < Heads; ++h) {
          if (h >= heads) break;
          konst[h][k] = fmaf(pv[h], zero, konst[h][k]);
          const float v = pv[h] * mag[k] * range;
          if constexpr (kBytes) {
            // |x| < 2^22: x = 65536 hi + 256 mid + lo (s8_upper).
            const int x = __float2int_rn(v), mid = s8_upper(x);
            unsigned char* bytes = reinterpret_cast<unsigned char*>(scratch.b);
            bytes[int8_byte(k, 0, lane)] = static_cast<unsigned char>(mid);
            bytes[int8_byte(k, 1, lane)] = static_cast<unsigned char>(x);
            bytes[int8_byte(k, 2, lane)] = static_cast<unsigned char>(s8_upper(mid));
          } else {
            const __half hi = __float2half_rn(v);
            const __half lo = __float2half_rn(v - __half2float(hi));
            out[(k * 32 + 8 * h) * 4] = __half_as_ushort(hi);
            out[(k * 32 + 8 * h + 4) * 4] = __half_as_ushort(lo);
          }
        }
      }
    };
    if (s.mode == GroupMode::hybrid) build_b(std::integral_constant<GroupMode, GroupMode::hybrid>{});
    else if (s.mode == GroupMode::asym) build_b(std::integral_constant<GroupMode, GroupMode::asym>{});
    else build_b(std::integral_constant<GroupMode, GroupMode::sym>{});
    __syncwarp();

    if constexpr (kBytes) {
      // One k-step: tokens t + 4e (k-slots 4t + e) and 16 + t + 4e (16 + 4t + e), four m-tiles at a time
      // (one 16-byte load per row).
#pragma unroll
      for (int m0 = 0; m0 < kMTiles; m0 += 4) {
        uint4 lo[4], hi[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          lo[e] = reinterpret_cast<const uint4*>(stage.codes[t + 4 * e])[m0 / 4];
          hi[e] = reinterpret_cast<const uint4*>(stage.codes[16 + t + 4 * e])[m0 / 4];
        }
        const auto word = [](const uint4& v, int m) { return m == 0 ? v.x : m == 1 ? v.y : m == 2 ? v.z : v.w; };
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const uint2 b = scratch.b[((16 * (m0 + m)) >> kGroupShift) * 32 + lane];
          const std::uint32_t a_lo = dec.gather(word(lo[0], m), word(lo[1], m), word(lo[2], m), word(lo[3], m));
          const std::uint32_t a_hi = dec.gather(word(hi[0], m), word(hi[1], m), word(hi[2], m), word(hi[3], m));
          const std::uint32_t a[4] = {a_lo & dec.mask_g, a_lo & dec.mask_g8, a_hi & dec.mask_g, a_hi & dec.mask_g8};
          planes::imma(acc[m0 + m], a, b.x, b.y);
        }
      }
    } else {
      // The two k-steps: tokens t, t + 4, t + 8, t + 12 of each (k-slots 2t, 2t + 1, 2t + 8, 2t + 9), four
      // m-tiles at a time (2-bit codes: one 16-byte load per row).
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const std::uint32_t* rows[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) rows[j] = stage.codes[16 * e + t + 4 * j] + dec.word;
#pragma unroll
        for (int m0 = 0; m0 < kMTiles; m0 += 4) {
          std::uint32_t w[4][4];
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            if constexpr (Bits == 2) {
              const uint4 v = reinterpret_cast<const uint4*>(rows[j])[m0 / 4];
              w[j][0] = v.x, w[j][1] = v.y, w[j][2] = v.z, w[j][3] = v.w;
            } else {
#pragma unroll
              for (int m = 0; m < 4; ++m) w[j][m] = rows[j][(m0 + m) * kWordsPerMTile<Bits>];
            }
          }
#pragma unroll
          for (int m = 0; m < 4; ++m) {
            const uint2 b = scratch.b[e * ScratchT::kStepPitch + ((16 * (m0 + m)) >> kGroupShift) * 32 + lane];
            std::uint32_t a[4];
            dec.decode(w[0][m], w[1][m], a[0], a[1]);
            dec.decode(w[2][m], w[3][m], a[2], a[3]);
            mma::mma(acc[m0 + m], a, b.x, b.y);
          }
        }
      }
    }
    if (++since_flush == kFlush) flush(), since_flush = 0;
  }
  flush();
  copy_wait<0>();

  // The zero points' sums over the warp's tokens; then lane (g, t) holds head t's channels
  // 16i + 2g, 16i + 2g + 1.
#pragma unroll
  for (int h = 0; h < Heads; ++h)
#pragma unroll
    for (int k = 0; k < Groups; ++k)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) konst[h][k] += __shfl_xor_sync(0xffffffffu, konst[h][k], off);
  if constexpr (kBytes) {
    // Lane (g, t < 2): channel 16m + 2g + t (row g + 8t).
    if (t < 2) {
#pragma unroll
      for (int m = 0; m < kMTiles; ++m) red[warp][0][16 * m + 2 * g + t] = total(m, 0) + konst[0][(16 * m) >> kGroupShift];
    }
  } else if (t < heads) {
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
      const int k = (16 * m) >> kGroupShift;
      float kt = 0.0f;
#pragma unroll
      for (int h = 0; h < Heads; ++h)
        if (h == t) kt = konst[h][k];
      red[warp][t][16 * m + 2 * g] = total(m, 0) + kt;
      red[warp][t][16 * m + 2 * g + 1] = total(m, 1) + kt;
    }
  }
  __syncthreads();
  for (int x = threadIdx.x; x < heads * D; x += kThreads) {
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) sum += red[k][x / D][x % D];
    p.partial[((static_cast<long long>(blockIdx.x) * gridDim.y + r) * heads) * D + x] = sum;
  }
}

template <int Bits, int D, int Groups, int Heads>
cudaError_t launch_groups(const OutputsParams& p, cudaStream_t stream) {
  const auto kernel = p.row_stats ? outputs_outer_mma_kernel<Bits, D, Groups, Heads, true> : outputs_outer_mma_kernel<Bits, D, Groups, Heads, false>;
  constexpr std::size_t kSmem = kWarps * (2 * sizeof(Stage<Bits, D>) + sizeof(Scratch<D, Groups, kSharedTotals<Heads>>));
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kThreads, kSmem, info));
  const RegionShape& s = p.values.shape;
  const SplitRuns runs = split_runs((s.tokens + kStretch - 1) / kStretch, p.splits, info, p.values.regions);
  KVQ_CUDA_TRY(launch_kernel(kernel, dim3(static_cast<unsigned>(runs.splits), static_cast<unsigned>(p.values.regions)), dim3(kThreads), kSmem, stream, p, runs.per_split));
  return add_splits(p.partial, runs.splits, static_cast<long long>(p.values.regions) * p.group * D, p.outputs, stream);
}

// The groups axis: a token's D / group size groups (group sizes 16 to 128, at most D).
template <int Bits, int D, int Heads>
cudaError_t launch(const OutputsParams& p, cudaStream_t stream) {
  switch (p.values.shape.group_size) {
    case 16: return launch_groups<Bits, D, D / 16, Heads>(p, stream);
    case 32: return launch_groups<Bits, D, D / 32, Heads>(p, stream);
    case 64: return launch_groups<Bits, D, D / 64, Heads>(p, stream);
    case 128:
      if constexpr (D == 128) return launch_groups<Bits, D, 1, Heads>(p, stream);
      else return cudaErrorInvalidValue;
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool outputs_outer_mma_supported(const DeviceRegions& values, int group) {
  return outputs_outer_supported(values.shape, group) && outer_mma::takes(values, group);
}

cudaError_t outputs_outer_mma(const OutputsParams& p, cudaStream_t stream) {
  const RegionShape& s = p.values.shape;
  if (!outputs_outer_mma_supported(p.values, p.group) || p.values.regions < 1 || p.splits < 1) return cudaErrorInvalidValue;
  KVQ_DISPATCH_OUTER_MMA(s, p.group, B, D, H, return launch<B, D, H>(p, stream);)
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
