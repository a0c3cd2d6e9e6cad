#pragma once
// Fast CPU reads of packed code chunks (core/packed.h layouts): per bit width,
// fixed-length loops over 16-code halves that the compiler vectorizes, summed in a
// fixed order so results do not depend on the machine's vector width. Inline, since
// they run once per group on the hot path.
#include <cstdint>

#include "core/packed.h"

namespace kvq::cpu {
namespace codes_detail {

// 3-bit field i (0..15) of a half-chunk whose words were shifted down by 16 * half (core/packed.h:
// the half's bytes are then bytes 0 and 1 of w0, w1, w2). i is a constant once a loop is unrolled.
[[gnu::always_inline]] inline std::uint32_t bits3_field(std::uint32_t w0, std::uint32_t w1, std::uint32_t w2, int i) {
  const std::uint32_t w[3] = {w0, w1, w2};
  return packed::get_code(w, 3, i);
}

// Field i (0..15) of half-chunk `half`, written so that a loop over i vectorizes
// (a shift by a per-lane constant, a mask, a convert).
template <int Bits>
[[gnu::always_inline]] inline std::uint32_t field(const std::uint32_t* chunk, int half, int i) {
  if constexpr (Bits == 2) {
    return (chunk[half] >> (2 * i)) & 3u;
  } else if constexpr (Bits == 3) {
    return bits3_field(chunk[0] >> (16 * half), chunk[1] >> (16 * half), chunk[2] >> (16 * half), i);
  } else if constexpr (Bits == 4) {
    return (chunk[2 * half + (i >> 3)] >> (4 * (i & 7))) & 15u;
  } else {
    return (chunk[4 * half + (i >> 2)] >> (8 * (i & 3))) & 255u;
  }
}

template <int Bits>
[[gnu::always_inline]] inline void half_decode(const std::uint32_t* chunk, int half, float* out) {
  for (int i = 0; i < 16; ++i) out[i] = static_cast<float>(field<Bits>(chunk, half, i));
}

// Eight channels at once (token-axis layout: their chunks are `Bits` words apart):
// acc[k] += sum_{i<16} p[i] * f_i(channel k). Lanes are channels, so no horizontal sums.
template <int Bits>
inline void half_dot8(const std::uint32_t* chunk0, int half, const float* p, float* acc) {
  constexpr int kWords = Bits == 3 ? 3 : Bits / 2;  // words holding one half-chunk (3 bits: a half of each word)
  std::uint32_t w[kWords][8];
  for (int k = 0; k < 8; ++k) {
    const std::uint32_t* chunk = chunk0 + k * Bits;
    if constexpr (Bits == 3) {
      for (int j = 0; j < 3; ++j) w[j][k] = chunk[j] >> (16 * half);
    } else {
      for (int j = 0; j < kWords; ++j) w[j][k] = chunk[kWords * half + j];
    }
  }
  for (int i = 0; i < 16; ++i) {
    const float pi = p[i];
    for (int k = 0; k < 8; ++k) {
      std::uint32_t f;
      if constexpr (Bits == 3) {
        f = bits3_field(w[0][k], w[1][k], w[2][k], i);
      } else {
        constexpr int kPerWord = 32 / Bits;
        f = (w[i / kPerWord][k] >> (Bits * (i % kPerWord))) & ((1u << Bits) - 1u);
      }
      acc[k] += pi * static_cast<float>(f);
    }
  }
}

}  // namespace codes_detail

// acc[k] += sum over codes [first, first+count) of chunk(k) of w[i - first] * f_i, for 8 channels whose
// chunks start at chunk0 and are `bits` words apart (the token-axis layout); first 0 or 16, count 16 or 32.
inline void chunk_dot8(const std::uint32_t* chunk0, int bits, int first, int count, const float* w, float* acc) {
  for (int half = first / 16; half < (first + count) / 16; ++half) {
    const float* wh = w + 16 * half - first;
    switch (bits) {
      case 2: codes_detail::half_dot8<2>(chunk0, half, wh, acc); break;
      case 3: codes_detail::half_dot8<3>(chunk0, half, wh, acc); break;
      case 4: codes_detail::half_dot8<4>(chunk0, half, wh, acc); break;
      default: codes_detail::half_dot8<8>(chunk0, half, wh, acc); break;
    }
  }
}

// All 32 codes of a chunk as floats.
inline void decode_chunk(const std::uint32_t* chunk, int bits, float* out) {
  switch (bits) {
    case 2: codes_detail::half_decode<2>(chunk, 0, out), codes_detail::half_decode<2>(chunk, 1, out + 16); return;
    case 3: codes_detail::half_decode<3>(chunk, 0, out), codes_detail::half_decode<3>(chunk, 1, out + 16); return;
    case 4: codes_detail::half_decode<4>(chunk, 0, out), codes_detail::half_decode<4>(chunk, 1, out + 16); return;
    default: codes_detail::half_decode<8>(chunk, 0, out), codes_detail::half_decode<8>(chunk, 1, out + 16); return;
  }
}

}  // namespace kvq::cpu
