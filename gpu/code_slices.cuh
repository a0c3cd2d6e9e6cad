#pragma once
// Slices of a 32-code chunk (core/packed.h) held in registers, and their decode for CUDA-core GEMVs.
//
// A slice is `Codes` consecutive codes of one chunk starting at a multiple of Codes (Codes = 8, 16
// or 32), moved so that its code i decodes with constant shifts:
//   Codes == 32:         the chunk's Bits words as stored;
//   Bits 2/4/8, Codes<32: max(1, Codes*Bits/32) words, code i at bits [i*Bits, +Bits);
//   Bits 3, Codes <= 16:  the chunk's 3 words shifted down to the slice's half (core/packed.h: its bytes
//                        then bytes 0 and 1 of each word), and a 4th word: which quarter of the half
//                        a slice of 8 is (its codes 0-3 whole in word 0 or 2, codes 4-7 whole in
//                        word 1 or split).
//
// unit_code returns 1 + f / 2^Bits, the code f placed in the top Bits mantissa bits of 1.0f: a shift
// and one LOP3 per code, where converting f with I2F runs at a quarter of the FMA rate. A group's
// x^ = f |s| + z_eff is then a u + (z_eff - a) with u the unit code and a = |s| 2^Bits.
#include <cstdint>

#include "core/packed.h"

namespace kvq::gpu::slices {

template <int Bits, int Codes>
inline constexpr int kWords = Codes == 32 ? Bits : (Bits == 3 ? 4 : (Codes * Bits >= 32 ? Codes * Bits / 32 : 1));

// N consecutive words; 8- and 16-byte loads where the count allows (chunks start on such boundaries:
// a chunk is Bits words and slices start at multiples of their own size).
template <int N>
__device__ __forceinline__ void load_words(const std::uint32_t* __restrict__ p, std::uint32_t (&w)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int k = 0; k < N / 4; ++k) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + k);
      w[4 * k] = v.x, w[4 * k + 1] = v.y, w[4 * k + 2] = v.z, w[4 * k + 3] = v.w;
    }
  } else if constexpr (N == 2) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) w[k] = __ldg(p + k);
  }
}

// Codes [first, first + Codes) of the chunk at `chunk` (first a multiple of Codes).
template <int Bits, int Codes>
__device__ __forceinline__ void load(const std::uint32_t* __restrict__ chunk, int first, std::uint32_t (&w)[kWords<Bits, Codes>]) {
  if constexpr (Codes == 32) {
    load_words<Bits>(chunk, w);
  } else if constexpr (Bits == 3) {
#pragma unroll
    for (int k = 0; k < 3; ++k) w[k] = __ldg(chunk + k) >> (first & 16);
    w[3] = (first >> 3) & 1;
  } else if constexpr (Codes * Bits >= 32) {
    load_words<kWords<Bits, Codes>>(chunk + first * Bits / 32, w);
  } else {
    w[0] = __ldg(chunk + (first * Bits >> 5)) >> ((first * Bits) & 31);
  }
}

// 1 + f / 2^Bits for code i of a slice (i a compile-time constant after unrolling).
template <int Bits, int Codes>
__device__ __forceinline__ float unit_code(const std::uint32_t (&w)[kWords<Bits, Codes>], int i) {
  std::uint32_t m;
  if constexpr (Bits == 3 && Codes == 8) {
    // Quarter 0: codes 0-7 of the half, whole in words 0 and 1; quarter 1: codes 8-11 whole in word 2
    // (where quarter 0's first four sit in word 0) and 12-15 split. Both forms, one selected.
    const int j = i & 3, at = 8 * (j >> 1) + 2 + 3 * (j & 1);
    std::uint32_t f;
    if (i < 4) {
      f = ((w[3] ? w[2] : w[0]) >> at) & 7u;
    } else {
      const std::uint32_t whole = (w[1] >> at) & 7u;
      const std::uint32_t split = ((w[j >> 1] >> (8 * (j & 1))) & 3u) | (((w[2] >> (8 * (j & 1) + (j >> 1))) & 1u) << 2);
      f = w[3] ? split : whole;
    }
    m = f << 20;
  } else if constexpr (Bits == 3) {
    m = packed::get_code(w, 3, i) << 20;  // Codes 16: on the shifted words (i < 16); 32: as stored
  } else {
    const int bit = i * Bits;
    m = ((w[bit >> 5] >> (bit & 31)) & ((1u << Bits) - 1u)) << (23 - Bits);
  }
  return __uint_as_float(0x3f800000u | m);
}

}  // namespace kvq::gpu::slices
