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
// byte i (a_word_high takes each code to the top of its byte instead; a_word_at reads it by lane):
//   2-bit:            (w[r] >> 2s) & 0x03030303                 code 16r + 4i + s
//   3-bit, r = 0:     (w[s/2] >> (5 - 3(s%2))) & 0x07070707     code 16(i/2) + 4(s/2) + 2(i%2) + 1 - s%2
//          r = 1, s < 2: (w[2] >> (5 - 3s)) & 0x07070707      code 16(i/2) + 8 + 2(i%2) + 1 - s
//          r = 1, s >= 2: (w[s%2] & 0x03030303) | (w[2] << (2 - s%2)) & 0x04040404
//                                                               code 16(i/2) + 12 + 2(s%2) + i%2
//   4-bit:            (w[2(s/2) + r] >> 4(s%2)) & 0x0F0F0F0F     code 16(s/2) + 8r + 2i + s%2
//   8-bit:            w[2s + r]                                  code 8s + 4r + i
// So every code sits whole in one byte, and the B byte of mma s, half r, byte i sits at slot
// 8s + 4r + i of the tile's B bytes (slot()).
#include <cstdint>

namespace kvq::gpu::planes {

// m16n8k32 steps per 32-code chunk, at every bit width: 4 (32 codes, 8 per lane and row each).
inline constexpr int kMmas = 4;
// B bytes of one tile and part: 8 per step.
inline constexpr int kBytes = 8 * kMmas;

// Slot of code c (0..31) in the B bytes.
template <int Bits>
__host__ __device__ constexpr int slot(int c) {
  if (Bits == 2) return 8 * (c & 3) + 4 * (c >> 4) + ((c >> 2) & 3);
  if (Bits == 3) {
    const int byte = 2 * (c >> 4) + ((c >> 1) & 1), k = c & 15;  // byte: of a whole code (table above)
    if (k < 8) return 8 * (2 * (k >> 2) + 1 - (k & 1)) + byte;
    if (k < 12) return 8 * (1 - (k & 1)) + 4 + byte;
    return 8 * (2 + ((k - 12) >> 1)) + 4 + 2 * (c >> 4) + ((k - 12) & 1);
  }
  if (Bits == 4) return 8 * (2 * (c >> 4) + (c & 1)) + 4 * ((c >> 3) & 1) + ((c >> 1) & 3);
  return c;
}

// A register of mma s, half r, from one row's chunk: the table above's codes, each moved to the top
// of its byte (code times kHighScale; s and r are constants once unrolled, so the shifts and masks
// are immediates). Left shifts and masks where the table's form shifts right: ptxas issues a left
// shift on the FMA pipe (IMAD.SHL), so the integer pipe keeps only the masks, and some steps are a
// mask alone. 3-bit codes: whole codes a mask and at most one left shift; the split ones (half 1 of
// steps 2 and 3) their low two bits at bits 5-6 and bit 2 at bit 7 (two shifts, two masks). Every dot
// product comes out times kHighScale: still below 2^31 in s32 (|acc| <= 32 * 255 * 128), and, the
// factor being a power of two, its conversion to fp32 rounds as the unscaled one would. The caller
// takes the factor back with its fixed point's range (gpu/value_tiles.cuh, gpu/key_bytes.cuh).
template <int Bits>
inline constexpr int kHighScale = Bits == 2 ? 64 : Bits == 3 ? 32 : Bits == 4 ? 16 : 1;
template <int Bits>
__device__ __forceinline__ std::uint32_t a_word_high(const std::uint32_t (&w)[Bits], int s, int r) {
  if constexpr (Bits == 2) return (w[r] << (6 - 2 * s)) & 0xC0C0C0C0u;
  if constexpr (Bits == 3) {
    if (r == 0 || s < 2) return (w[r == 0 ? s >> 1 : 2] << (3 * (s & 1))) & 0xE0E0E0E0u;
    return ((w[s & 1] << 5) & 0x60606060u) | ((w[2] << (7 - (s & 1))) & 0x80808080u);
  }
  if constexpr (Bits == 4) return (w[2 * (s >> 1) + r] << (4 - 4 * (s & 1))) & 0xF0F0F0F0u;
  return w[2 * s + r];
}

// Shared chunks (gpu/head_tiles.cuh, gpu/scores_heads.cu): the four lanes of a quad feed ONE chunk
// per mma, lane t taking the k-slots of step t, so that B's columns are free for (head, part) and a
// whole 32-code chunk takes one mma. The B bytes of lane t's slots are then bytes 8t..8t+7 of the
// slots above.
// Words of a row's chunk that lane t reads, from word lane_word0<Bits>(t): the whole chunk for 2- and
// 3-bit codes, the two words of step t for 4- and 8-bit ones.
template <int Bits>
inline constexpr int kLaneWords = Bits == 2 || Bits == 3 ? Bits : 2;
template <int Bits>
__device__ __forceinline__ int lane_word0(int t) {
  return Bits == 4 ? 2 * (t >> 1) : Bits == 8 ? 2 * t : 0;
}
// The table above's A register of step t, half r, from lane t's words w (codes not moved up), with
// shifts by t.
template <int Bits>
__device__ __forceinline__ std::uint32_t a_word_at(const std::uint32_t (&w)[kLaneWords<Bits>], int t, int r) {
  if constexpr (Bits == 2) return (w[r] >> (2 * t)) & 0x03030303u;
  if constexpr (Bits == 3) {
    // One form for every lane, what differs by lane being a word select and a rotation amount (both
    // the same for every chunk) and masks: half 0 a whole code of word t / 2; half 1 a whole code of
    // word 2 (lanes 0, 1, from the rotation, word t % 2's term masked off) or a split code (lanes 2, 3:
    // word t % 2's low bits, word 2's bit rotated left into bit 2).
    const int p_shift = 5 - 3 * (t & 1);
    if (r == 0) {
      const std::uint32_t x = t >> 1 ? w[1] : w[0];  // selects: a register array takes no runtime index
      return __funnelshift_r(x, x, p_shift) & 0x07070707u;
    }
    const bool split = t >= 2;
    const std::uint32_t low = (t & 1 ? w[1] : w[0]) & (split ? 0x03030303u : 0u);
    return low | (__funnelshift_r(w[2], w[2], split ? (t & 1) - 2 : p_shift) & (split ? 0x04040404u : 0x07070707u));
  }
  if constexpr (Bits == 4) return (w[r] >> (4 * (t & 1))) & 0x0F0F0F0Fu;
  return w[r];
}

// Largest fixed-point magnitude: hi = (x - lo) / 256 with lo the sign-extended low byte stays in s8.
inline constexpr int kFixedMax = 127 * 256 + 127;

// x as (hi, lo) s8 bytes with x = 256 hi + lo.
__device__ __forceinline__ void split_fixed(int x, std::uint8_t& hi, std::uint8_t& lo) {
  const int low = static_cast<int>(static_cast<std::int8_t>(x & 0xff));
  hi = static_cast<std::uint8_t>((x - low) >> 8);
  lo = static_cast<std::uint8_t>(low);
}

// A's four registers of one mma over a shared chunk, from lane t's words of its two rows.
template <int Bits>
__device__ __forceinline__ void a_regs_at(const std::uint32_t (&row0)[kLaneWords<Bits>], const std::uint32_t (&row1)[kLaneWords<Bits>], int t,
                                          std::uint32_t (&a)[4]) {
  a[0] = a_word_at<Bits>(row0, t, 0), a[1] = a_word_at<Bits>(row1, t, 0);
  a[2] = a_word_at<Bits>(row0, t, 1), a[3] = a_word_at<Bits>(row1, t, 1);
}

// The fixed point's scale for values whose largest magnitude is amax (1 for none), and in inv what
// turns a product back.
__device__ __forceinline__ float fixed_range(float amax, float& inv) {
  inv = amax > 0.0f ? amax * (1.0f / kFixedMax) : 1.0f;
  return amax > 0.0f ? __fdividef(static_cast<float>(kFixedMax), amax) : 1.0f;
}

// v * range as fixed point (fixed_range's range), rounded and clamped to +-kFixedMax.
__device__ __forceinline__ int to_fixed(float v, float range) { return max(-kFixedMax, min(kFixedMax, __float2int_rn(v * range))); }

// v * range as fixed point, its hi and lo bytes at code c's slot of one chunk's B bytes
// ([part][kBytes]).
template <int Bits>
__device__ __forceinline__ void put_fixed(float v, float range, int c, std::uint8_t (*bytes)[kBytes]) {
  const int x = to_fixed(v, range);
  std::uint8_t hi, lo;
  split_fixed(x, hi, lo);
  bytes[0][slot<Bits>(c)] = hi, bytes[1][slot<Bits>(c)] = lo;
}

// Shared chunks: lane (g, t)'s B of one chunk from head 4q + g / 2's bytes (`head`, [part][kBytes];
// zero where !live, a head past the group), and the chunk's sum of head 4q + t's fixed-point values,
// which every lane of the warp must take part in: the quad's bytes hold each code once.
template <int Bits>
__device__ __forceinline__ int shared_b(const std::uint8_t (*head)[kBytes], bool live, int g, int t, std::uint32_t (&b)[2]) {
  const uint2 v = live ? *reinterpret_cast<const uint2*>(&head[g & 1][8 * t]) : make_uint2(0u, 0u);
  b[0] = v.x, b[1] = v.y;
  int part = __dp4a(static_cast<int>(b[0]), 0x01010101, __dp4a(static_cast<int>(b[1]), 0x01010101, 0));
  part += __shfl_xor_sync(0xffffffffu, part, 1);
  part += __shfl_xor_sync(0xffffffffu, part, 2);
  const int other = __shfl_xor_sync(0xffffffffu, part, 4);  // lane (g ^ 1, t): the other part
  const int sum = (g & 1) ? 256 * other + part : 256 * part + other;
  return __shfl_sync(0xffffffffu, sum, 8 * t);  // lane (2t, 0) holds head 4q + t's
}

// c += A (16x32, u8, row) * B (32x8, s8, col), exact in s32. Not volatile, as mma::mma.
__device__ __forceinline__ void imma(int (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared chunks: one B set's products over a chunk, the lane's
// accumulator pair per row k being its head's exact dot product, added to out[k] as the row's group
// term in the fixed point's scale times inv: (|s| dot + zero * sum) * inv, or with Sym, the zero point
// being -offset |s|, (dot - offset_sum) * |s| * inv on the integers (offset_sum = offset * sum).
template <int Bits, bool Sym>
__device__ __forceinline__ void add_chunk_terms(const std::uint32_t (&a)[4], const std::uint32_t (&b)[2], const float (&scale)[2], const float (&zero)[2],
                                                float sum, int offset_sum, float inv, float (&out)[2]) {
  int c[4] = {};
  imma(c, a, b[0], b[1]);
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const int dot = 256 * c[2 * k] + c[2 * k + 1];
    if constexpr (Sym) out[k] += static_cast<float>(dot - offset_sum) * (scale[k] * inv);
    else out[k] += (scale[k] * static_cast<float>(dot) + zero[k] * sum) * inv;
  }
}

}  // namespace kvq::gpu::planes
