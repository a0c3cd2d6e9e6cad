#pragma once
// Lane-owned chunks, and codes to fp16 pairs in place: the tensor-core layout and decode of the
// one-head keys GEMV and fused attention at head_dim 64 (gpu/key_units.cuh; head_dim 128 takes
// gpu/key_bytes.cuh).
//
// In an m16n8k16 tile, lane (g, t) holds rows g and g+8 and, in every k-step, the k-slots 2t, 2t+1,
// 2t+8, 2t+9. Since the reduction may visit its steps in any order, lane t feeds all its slots from
// ONE 32-code chunk of each of its rows (or one half of it, for head_dim 64 keys): it loads only that
// chunk straight from global memory, and the 4 lanes of a quad cover 4 chunks per step. B's 8 columns
// are then (unit u, part): column 2u + part is zero except in lane u's slots, where it carries the
// hi or lo fp16 part of the vector. So the accumulator columns 2t, 2t+1 on lane t hold the dot
// product of lane t's own chunk, which lies in one quantization group: the group's scale multiplies
// it in registers, with no cross-group mixing and no shared-memory staging of the codes.
//
// A lane's span is one 32-code chunk of a row (core/packed.h), or half of one (codes 16p..16p+15,
// head_dim 64). Its words are first arranged so that each holds code pairs at the same bit position P
// of its two 16-bit halves (span_words): then one pair is `(word >> shift & mask) | 0x3C00'3C00`, the
// field f landing at mantissa bit `pos` of 1.0 in both halves: A = 1 + f * 2^(pos - 10), exact, with
// no per-pair shift (the pairs of a word share up to four shifts). B carries the vector entry times
// weight = plane * 2^(10 - pos), so A * B = v * weight + f * plane * v: the first term, summed over
// the span, is a constant of the vector that the kernel takes back once per row.
//
// Word kinds (P runs over the field positions of a 16-bit half):
//   2-bit codes: 8 pairs per word, P = 2k, codes (16m+k, 16m+k+8);
//   3-bit codes (core/packed.h: half h in bytes 2h, 2h+1 of every word): a whole chunk's word k pairs
//     half 0 with half 1, codes (c, c+16): its 4 whole codes (width 3, P = 8jj + 2 + 3p) and, in words
//     0 and 1, the low two bits of 2 split codes (P = 8jj) or, in word 2, the bit 2 of 4 (plane weight
//     4, P = 8jj + m); a half chunk's bytes are first spread to the low bytes of both 16-bit halves
//     (one PRMT a word), pairing its bytes jj = 0 and 1: codes (c, c+2), 10 pairs. Zero pairs (no
//     field, B zero) pad the pairs to whole quarters of steps (24 a chunk, 16 a half);
//   4-bit codes: 4 pairs per word, P = 4k, codes (8m+k, 8m+k+4);
//   8-bit codes: 2 pairs per word, P = 8k, codes (4m+k, 4m+k+2).
// Fields land high in the mantissa (bits 6..9; 6 for 3- and 4-bit fields, 2 for 8-bit ones), so the
// constant outweighs a code's unit by at most 16 (256 for 8-bit codes, whose values reach 255): the
// accumulator keeps the precision of the shift-per-pair decode within a few bits, at up to four
// shifts per word (six for 3-bit codes) instead of one per pair. B's weights are then at most 64 (256
// for 8-bit codes).
#include <cstdint>

#include "gpu/mma.cuh"

namespace kvq::gpu::pairs {

// Words of a span after span_words(), and pairs per row of a span.
template <int Bits, bool Half>
inline constexpr int kWords = Half ? (Bits == 3 ? 3 : Bits / 2) : Bits;
template <int Bits, bool Half>
inline constexpr int kPairs = Bits == 3 ? (Half ? 16 : 24) : (Half ? 8 : 16);

struct Pair {
  int word;     // span word
  int shift;    // right shift (negative: left) before the mask
  int pos;      // mantissa bit of the field's lowest bit
  int width;    // field bits
  int plane;    // weight of the field in the code (4 for a split 3-bit code's bit 2; 0 for a zero pair)
  int lo, hi;   // codes (within the span) in the low and high halves
  __host__ __device__ constexpr std::uint32_t mask() const {
    const std::uint32_t m = ((1u << width) - 1u) << pos;
    return m | (m << 16);
  }
  // B's factor on the vector entry: plane * 2^(10 - pos).
  __host__ __device__ constexpr float weight() const { return static_cast<float>(plane << (10 - pos)); }
};

// Field at half-word position P of width w: the shift that lands it in mantissa bits 6..9 (width 1),
// 6 or 8 (width 2), 6 (widths 3 and 4) or 2 (width 8).
__host__ __device__ constexpr int shift_for(int width, int P) {
  if (width == 1) return P < 2 ? -8 : P < 6 ? -4 : P <= 9 ? 0 : P <= 13 ? 4 : 8;
  if (width == 2) return P == 0 ? -8 : P < 6 ? -4 : P <= 8 ? 0 : P <= 12 ? 4 : 8;
  return width == 3 || width == 4 ? P - 6 : P - 2;
}

__host__ __device__ constexpr Pair make_pair(int word, int width, int plane, int P, int lo, int hi) {
  const int sh = shift_for(width, P);
  return {word, sh, P - sh, width, plane, lo, hi};
}

// Pair i (0 .. kPairs - 1) of a span: words in order, positions in order within a word (3-bit codes:
// whole codes, then split codes' low bits, then their bit 2, then zero pairs).
template <int Bits, bool Half>
__host__ __device__ constexpr Pair pair(int i) {
  if (Bits == 2) {
    const int m = i / 8, k = i % 8;
    return make_pair(m, 2, 1, 2 * k, 16 * m + k, 16 * m + k + 8);
  }
  if (Bits == 3 && Half) {  // byte jj of the half in 16-bit half jj: codes (c, c + 2)
    if (i < 6) return make_pair(i / 2, 3, 1, 2 + 3 * (i % 2), 4 * (i / 2) + i % 2, 4 * (i / 2) + i % 2 + 2);
    if (i < 8) return make_pair(i - 6, 2, 1, 0, 12 + 2 * (i - 6), 13 + 2 * (i - 6));
    if (i < 10) return make_pair(2, 1, 4, i - 8, 12 + 2 * (i - 8), 13 + 2 * (i - 8));
    return Pair{0, 0, 0, 0, 0, 0, 0};
  }
  if (Bits == 3) {  // halves 0 and 1 in the 16-bit halves: codes (c, c + 16)
    if (i < 12) {
      const int k = i / 4, jj = (i % 4) / 2, p = i % 2;
      return make_pair(k, 3, 1, 8 * jj + 2 + 3 * p, 4 * k + 2 * jj + p, 4 * k + 2 * jj + p + 16);
    }
    if (i < 16) {
      const int m = (i - 12) / 2, jj = (i - 12) % 2;
      return make_pair(m, 2, 1, 8 * jj, 12 + 2 * m + jj, 28 + 2 * m + jj);
    }
    if (i < 20) {
      const int m = (i - 16) % 2, jj = (i - 16) / 2;
      return make_pair(2, 1, 4, 8 * jj + m, 12 + 2 * m + jj, 28 + 2 * m + jj);
    }
    return Pair{0, 0, 0, 0, 0, 0, 0};
  }
  if (Bits == 4) {
    const int m = i / 4, k = i % 4;
    return make_pair(m, 4, 1, 4 * k, 8 * m + k, 8 * m + k + 4);
  }
  const int m = i / 2, k = i % 2;
  return make_pair(m, 8, 1, 8 * k, 4 * m + k, 4 * m + k + 2);
}

// The span's words from its chunk's Bits words: the whole chunk, or half p of it.
template <int Bits, bool Half>
__device__ __forceinline__ void span_words(const std::uint32_t (&chunk)[Bits], int p, std::uint32_t (&w)[kWords<Bits, Half>]) {
  if constexpr (!Half) {
#pragma unroll
    for (int k = 0; k < Bits; ++k) w[k] = chunk[k];
  } else if constexpr (Bits == 3) {
    // Bytes 2p and 2p+1 of each word (the half's) to the low bytes of its two 16-bit halves.
#pragma unroll
    for (int k = 0; k < 3; ++k) w[k] = __byte_perm(chunk[k], 0u, p ? 0x4342u : 0x4140u);
  } else {
#pragma unroll
    for (int k = 0; k < Bits / 2; ++k) w[k] = p ? chunk[Bits / 2 + k] : chunk[k];
  }
}

// B's half2 for pair i: part (0 hi, 1 lo) of weight * v at the pair's two codes (v indexed by code
// within the span). The products are exact: weights are powers of two.
template <int Bits, bool Half>
__device__ __forceinline__ std::uint32_t b_pair(const float* v, int i, int part) {
  const Pair P = pair<Bits, Half>(i);
  const float w = P.weight();
  return mma::pack_half2(mma::split_part(v[P.lo] * w, part), mma::split_part(v[P.hi] * w, part));
}

// Sum of the B weights a code carries over the span's pairs (its pair, plus the pair of its bit 2 for a
// split 3-bit code): v[code] times this, summed over the span, is the constant A's 1s add.
template <int Bits, bool Half>
__device__ __forceinline__ float weight_sum(int code) {
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kPairs<Bits, Half>; ++i) {
    const Pair P = pair<Bits, Half>(i);
    if (P.lo == code || P.hi == code) sum += P.weight();
  }
  return sum;
}

// A power of two bringing max|v| (> 0) into [16, 32): B = v * weight (weights <= 256) stays far below
// fp16's max.
__device__ __forceinline__ float range_scale(float max_abs) {
  return max_abs > 0.0f ? exp2f(static_cast<float>(4 - ilogbf(max_abs))) : 1.0f;
}

// 1.0 in both fp16 halves: the exponent the fields are placed under.
inline constexpr std::uint32_t kOnes = 0x3C003C00u;

// The fp16 pair (low half: code lo, high half: code hi) of pair i; i is a constant once its loop is
// unrolled, so the shift and mask fold into immediates. `ones` must hold kOnes in a register the
// compiler cannot see through (a kernel argument): with both constants known it splits the AND-OR
// into two LOP3s, since a LOP3 takes one immediate.
template <int Bits, bool Half>
__device__ __forceinline__ std::uint32_t decode(const std::uint32_t (&w)[kWords<Bits, Half>], int i, std::uint32_t ones) {
  const Pair P = pair<Bits, Half>(i);
  const std::uint32_t x = P.shift > 0 ? w[P.word] >> P.shift : P.shift < 0 ? w[P.word] << -P.shift : w[P.word];
  return (x & P.mask()) | ones;
}

}  // namespace kvq::gpu::pairs
