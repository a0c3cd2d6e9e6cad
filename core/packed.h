#pragma once
// The packed KV-cache formats, shared by cpu_ref/ (host) and gpu/ (device).
// Everything that decides where a bit lives is in this file; docs/PACKED.md
// draws the same layouts. All integers little-endian, as on x86 and NVIDIA GPUs.
//
// Codes. Every quantized value is an unsigned b-bit field f (b in {2,3,4,8}).
// Codes are packed in chunks of 32 consecutive codes along the group axis; a
// chunk is exactly b 32-bit words (CodeChunk<b>):
//   b = 2, 4, 8: code i sits at bits [(i*b) % 32, (i*b) % 32 + b) of word (i*b) / 32,
//                least-significant bits first (16, 8 or 4 codes per word);
//   b = 3:       two whole codes a byte, so that a decoder takes four codes with one mask
//                (and at most one shift); 8 codes fill the 2 bits each byte has left. Half h
//                (codes 16h..16h+15) lives in bytes 2h and 2h+1 of every word; with byte
//                j = 2h + jj (jj = 0, 1) of a word:
//                  code 16h + 4k + 2jj + p (k = 0..2, p = 0, 1): bits 2+3p..4+3p of byte j of word k;
//                  code 16h + 12 + 2m + jj (m = 0, 1):  its low two bits at bits 0..1 of byte j of
//                                                       word m, its bit 2 at bit m of byte j of word 2.
//                (Layout 2; layout 1 kept the low two bits and bit 2 of every code in separate words.)
// A half-chunk (codes 0..15 or 16..31) always occupies whole bytes, so groups of 16 work too.
//
// Meaning of f, per group with stored scale s and zero point z (fp16 or fp32):
//   asym:          x^ = f * s + z
//   sym, signmag:  x^ = (f - (2^(b-1) - 1)) * s   levels -(2^(b-1)-1) .. 2^(b-1)-1
//   sym, twos:     x^ = (f - 2^(b-1)) * s         levels -2^(b-1) .. 2^(b-1)-1
//   hybrid:        the sign bit of the stored scale is the group's mode bit: set means
//                  asymmetric (x^ = f * |s| + z), clear means symmetric. It costs no bytes.
//   codebook:      x^ = levels[f] (core/codebook.h), no scale or zero point stored; channel
//                  axis only. Token scales (fp32 per token) live beside the region, not in it.
// So every integer group reads as x^ = f * |s| + z_eff with z_eff = z (asym) or -offset * s (sym):
// a dot product over a group is |s| * sum(f_i * w_i) + z_eff * sum(w_i).
//
// Layouts of the quantized region of one (layer, kv head) tensor: Q tokens, d channels
// (d a multiple of 32), group size G.
//   channel axis (groups of G channels within a token: keys' inner layout, KIVI's values):
//     codes  row-major by token, each token d/32 chunks: chunk (t, j) at words [(t*d/32 + j) * b, +b)
//     group  (t, g) has index t * (d/G) + g
//   token axis (groups of G tokens within a channel: values' inner layout, KIVI's keys):
//     codes  tiles of 32 tokens; in tile k, channel c owns chunk (k, c) at words [(k*d + c) * b, +b),
//            holding tokens 32k..32k+31 at positions 0..31. A tile is allocated whole.
//     group  (t / G, c) has index (t / G) * d + c
// Scales: one per group, in group index order.
// Zero points: asym, one per group in group order; sym, none; hybrid, one per asymmetric
//   group only, in group order, plus zero_base[r] (uint32) = the number of asymmetric groups
//   before zero-block r, where a zero-block is 32 tokens (channel axis) or G tokens (token
//   axis). A group's zero sits at zero_base[r] + (asymmetric groups before it in block r).
#include <cstdint>

#if defined(__CUDACC__)
#define KVQ_HD __host__ __device__ __forceinline__
#else
#define KVQ_HD inline
#endif

namespace kvq::packed {

inline constexpr int kChunkCodes = 32;  // codes per chunk, along the group axis
inline constexpr int kTileTokens = 32;  // tokens per tile of the token-axis layout

template <int Bits>
struct CodeChunk {
  std::uint32_t word[Bits];
};
static_assert(sizeof(CodeChunk<2>) == 8, "2-bit chunk: 32 codes in 2 words");
static_assert(sizeof(CodeChunk<3>) == 12, "3-bit chunk: 32 codes in 3 words");
static_assert(sizeof(CodeChunk<4>) == 16, "4-bit chunk: 32 codes in 4 words");
static_assert(sizeof(CodeChunk<8>) == 32, "8-bit chunk: 32 codes in 8 words");

// Words one chunk of b-bit codes takes.
KVQ_HD constexpr int chunk_words(int bits) { return bits; }

// Offset of the symmetric levels in the unsigned field.
KVQ_HD constexpr int sym_offset(int bits, bool twos) { return twos ? (1 << (bits - 1)) : (1 << (bits - 1)) - 1; }

// The packed layout's version, written beside stored codes: 2 since 3-bit codes sit two to a byte.
inline constexpr int kLayoutVersion = 2;

// 3-bit codes: where code i (0..31) sits (the layout above). A whole code: bits [bit, bit + 3) of
// word `word`. A split one (split true): its low two bits at [bit, bit + 2) of word `word`, its bit 2
// at bit `bit2` of word 2.
struct Bits3Place {
  bool split;
  int word, bit, bit2;
};
KVQ_HD constexpr Bits3Place bits3_place(int i) {
  const int h = i >> 4, r = i & 15;
  if (r < 12) return {false, r >> 2, 8 * (2 * h + ((r >> 1) & 1)) + 2 + 3 * (r & 1), 0};
  const int m = (r - 12) >> 1, byte = 2 * h + ((r - 12) & 1);
  return {true, m, 8 * byte, 8 * byte + m};
}

// Reads code i (0..31) of a chunk.
KVQ_HD std::uint32_t get_code(const std::uint32_t* chunk, int bits, int i) {
  if (bits == 3) {
    const Bits3Place p = bits3_place(i);
    if (!p.split) return (chunk[p.word] >> p.bit) & 7u;
    return ((chunk[p.word] >> p.bit) & 3u) | (((chunk[2] >> p.bit2) & 1u) << 2);
  }
  const int bit = i * bits;
  return (chunk[bit >> 5] >> (bit & 31)) & ((1u << bits) - 1u);
}

// Where code i (0..31) of a chunk lives: `word[k] |= bits[k]` for the k < count parts.
// One definition for the CPU (plain OR) and the GPU (atomicOr, since groups of 16 share words).
struct CodePlacement {
  int count;
  int word[2];
  std::uint32_t bits[2];
};
KVQ_HD CodePlacement place_code(int bits, int i, std::uint32_t code) {
  if (bits == 3) {
    const Bits3Place p = bits3_place(i);
    if (!p.split) return {1, {p.word, 0}, {code << p.bit, 0u}};
    return {2, {p.word, 2}, {(code & 3u) << p.bit, ((code >> 2) & 1u) << p.bit2}};
  }
  const int bit = i * bits;
  return {1, {bit >> 5, 0}, {code << (bit & 31), 0u}};
}

// ORs code i (0..31) into a chunk whose bits for that code are still zero.
KVQ_HD void put_code(std::uint32_t* chunk, int bits, int i, std::uint32_t code) {
  const CodePlacement p = place_code(bits, i, code);
  for (int k = 0; k < p.count; ++k) chunk[p.word[k]] |= p.bits[k];
}

// The hybrid mode bit lives in the sign of the stored scale.
inline constexpr std::uint16_t kHalfSignBit = 0x8000u;
inline constexpr std::uint32_t kFloatSignBit = 0x80000000u;

}  // namespace kvq::packed
