#pragma once
// Lane-owned chunks as exact 8-bit integers: the int8 tensor-core layout of the warp-streamed
// values (gpu/value_tiles.cuh). A = codes (u8), B = the probabilities as signed 16-bit fixed point
// split into two s8 parts, mma.sync m16n8k32 with s32 accumulate: every product is exact.
//
// In an m16n8k32 tile, lane (g, t) holds rows g and g+8 and the k-slots 4t..4t+3 (A registers a0,
// a1; B register b0) and 16+4t..16+4t+3 (a2, a3; b1), one byte each. As in gpu/mantissa_pairs.cuh,
// lane t feeds all its slots from ONE 32-code chunk per row (its own tile of 32 tokens), and B's
// column 2u + part is zero outside lane u's slots, where it carries the hi (part 0) or lo (part 1)
// byte of the fixed-point probability; the accumulator pair (2t, 2t+1) of lane t is its own tile's
// dot product, hi * 256 + lo.
//
// A register (mma s, half r) of a row, from the row's chunk w (core/packed.h), and the code in its
// byte i:
//   2-bit:            (w[r] >> 2s) & 0x03030303                 code 16r + 4i + s        (s < 4)
//   3-bit, s < 4:     the same from the low planes
//          s = 4+s':  bit 2 of code 8i + s' + 4r, already times 4 (one shift and one AND)
//   4-bit:            (w[2(s/2) + r] >> 4(s%2)) & 0x0F0F0F0F     code 16(s/2) + 8r + 2i + s%2
//   8-bit:            w[2s + r]                                  code 8s + 4r + i
// So a 3-bit code's two parts land in one accumulator, and the B byte of mma s, half r, byte i sits at
// slot 8s + 4r + i of the tile's B bytes (slot(), slot_bit2()).
#include <cstdint>

namespace kvq::gpu::planes {

// m16n8k32 steps per 32-code chunk: 4 (32 codes, 8 per lane and row each); 3-bit codes add 4 for
// their bit-2 plane.
template <int Bits>
inline constexpr int kMmas = Bits == 3 ? 8 : 4;
// B bytes of one tile and part: 8 per step.
template <int Bits>
inline constexpr int kBytes = 8 * kMmas<Bits>;

// Slot of code c (0..31) in the B bytes: its (only, or low-plane) byte.
template <int Bits>
__host__ __device__ constexpr int slot(int c) {
  if (Bits == 2 || Bits == 3) return 8 * (c & 3) + 4 * (c >> 4) + ((c >> 2) & 3);
  if (Bits == 4) return 8 * (2 * (c >> 4) + (c & 1)) + 4 * ((c >> 3) & 1) + ((c >> 1) & 3);
  return c;
}
// 3-bit codes: the slot of code c's bit-2-plane byte.
__host__ __device__ constexpr int slot_bit2(int c) { return 32 + 8 * (c & 3) + 4 * ((c >> 2) & 1) + (c >> 3); }

// A register of mma s, half r, from one row's chunk. s and r are constants once unrolled, so the
// shifts and masks are immediates.
template <int Bits>
__device__ __forceinline__ std::uint32_t a_word(const std::uint32_t (&w)[Bits], int s, int r) {
  if constexpr (Bits == 2) return (w[r] >> (2 * s)) & 0x03030303u;
  if constexpr (Bits == 3) {
    if (s < 4) return (w[r] >> (2 * s)) & 0x03030303u;
    const int sh = s - 4 + 4 * r;  // bit 2 of code 8i + sh sits at bit 8i + sh; 4x that is bit 8i + 2
    return (sh >= 2 ? w[2] >> (sh - 2) : w[2] << (2 - sh)) & 0x04040404u;
  }
  if constexpr (Bits == 4) return (w[2 * (s >> 1) + r] >> (4 * (s & 1))) & 0x0F0F0F0Fu;
  return w[2 * s + r];
}

// Largest fixed-point magnitude: hi = (x - lo) / 256 with lo the sign-extended low byte stays in s8.
inline constexpr int kFixedMax = 127 * 256 + 127;

// x as (hi, lo) s8 bytes with x = 256 hi + lo.
__device__ __forceinline__ void split_fixed(int x, std::uint8_t& hi, std::uint8_t& lo) {
  const int low = static_cast<int>(static_cast<std::int8_t>(x & 0xff));
  hi = static_cast<std::uint8_t>((x - low) >> 8);
  lo = static_cast<std::uint8_t>(low);
}

// c += A (16x32, u8, row) * B (32x8, s8, col), exact in s32. Not volatile, as mma::mma.
__device__ __forceinline__ void imma(int (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace kvq::gpu::planes
