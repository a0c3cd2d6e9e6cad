#pragma once
// The A-side decode shared by the outer layouts' tensor-core GEMVs (outputs_outer_mma.cu over
// channel-axis values, scores_outer_mma.cu over token-axis keys): LaneDecode for fp16 tensor cores,
// ByteRows for int8 ones (2-bit codes, one query head). In both, A's rows run along a
// 32-code chunk (core/packed.h): a token's channels for values, a channel's tokens for keys. The
// chunk's codes are two m-tiles of 16 rows, and lane (g, t) owns codes 16m + 2g (row g) and
// 16m + 2g + 1 (row g + 8) of m-tile m. Both codes sit in one byte of the chunk (8-bit codes: two
// adjacent bytes), in word kWordsPerMTile * m + word of the chunk.
//
// The fragment wants two k-slots per register, that is the same rows of two chunks (x, y). One PRMT
// gathers the lane's byte of both into the low bytes of the two fp16 halves; per row, one LOP3 keeps
// the row's field under the exponent of 1024 and one HSUB2 takes the 1024 back: f * 2^pos, exact
// (8-bit: a shift first for the second byte). The row's weight 2^pos comes off with the accumulators.
// (Fields left as fp16 subnormals, f * 2^(pos - 24), would save the HSUB2, but the tensor cores then
// drop B's lo part: NMSE up to 7e-7 against double over 32k tokens, under 1e-10 with normal A,
// measured on the H100.)
#include <cstdint>

#include "gpu/dispatch.cuh"
#include "gpu/region.h"

namespace kvq::gpu::outer_mma {

// Query heads per kv head that share one mma: the hi and lo columns of each in B's 8.
inline constexpr int kMaxHeads = 4;

// What both kernels take beyond their layout's CUDA-core GEMV: bits 2/4/8 (a row pair's codes in one
// byte, or two), fp16 metadata, up to kMaxHeads heads, codes on 16 bytes (cp.async copies).
inline bool takes(const DeviceRegions& r, int group) {
  const bool bits = r.shape.bits == 2 || r.shape.bits == 4 || r.shape.bits == 8;
  const bool on16 = reinterpret_cast<std::uintptr_t>(r.codes) % 16 == 0;
  return bits && r.shape.meta_fp16 && group <= kMaxHeads && on16;
}

// Words of a chunk per 16 codes.
template <int Bits>
inline constexpr int kWordsPerMTile = Bits / 2;

// Lane g's decode: the PRMT selector, the rows' masks and weights, and its word within an m-tile's.
template <int Bits>
struct LaneDecode {
  unsigned select;
  std::uint32_t mask_g, mask_g8;
  int pos_g, pos_g8;  // bit of the field's lowest bit in its fp16 half
  int word;

  __device__ __forceinline__ explicit LaneDecode(int g) {
    if constexpr (Bits == 2) {  // byte g / 2, fields at 4 (g % 2) and 4 (g % 2) + 2
      const unsigned j = g >> 1;
      select = j | (j << 4) | ((4 + j) << 8) | ((4 + j) << 12);
      pos_g = 4 * (g & 1), pos_g8 = pos_g + 2, word = 0;
    } else if constexpr (Bits == 4) {  // word g / 4, byte g % 4: low and high nibble
      const unsigned j = g & 3;
      select = j | (j << 4) | ((4 + j) << 8) | ((4 + j) << 12);
      pos_g = 0, pos_g8 = 4, word = g >> 2;
    } else {  // word g / 2, bytes 2 (g % 2) and 2 (g % 2) + 1
      const unsigned j = 2 * (g & 1);
      select = j | ((j + 1) << 4) | ((4 + j) << 8) | ((5 + j) << 12);
      pos_g = 0, pos_g8 = 0, word = g >> 1;
    }
    const std::uint32_t field = (1u << (Bits == 8 ? 8 : Bits)) - 1u;
    mask_g = (field << pos_g) * 0x00010001u;
    mask_g8 = (field << pos_g8) * 0x00010001u;
  }

  // Rows g and g + 8 from the lane's words of chunks x (low half: k-slot 2t or 2t + 8) and y (high
  // half): the A registers for one k pair.
  __device__ __forceinline__ void decode(std::uint32_t x, std::uint32_t y, std::uint32_t& row_g, std::uint32_t& row_g8) const {
    const std::uint32_t both = __byte_perm(x, y, select);
    row_g = unit((both & mask_g) | 0x64006400u);
    row_g8 = unit(((Bits == 8 ? both >> 8 : both) & mask_g8) | 0x64006400u);
  }
  // 1024 + f 2^pos in both halves, minus 1024: exact.
  __device__ __forceinline__ static std::uint32_t unit(std::uint32_t biased) {
    std::uint32_t out;
    asm("sub.f16x2 %0, %1, %2;" : "=r"(out) : "r"(biased), "r"(0x64006400u));
    return out;
  }
};

// 2-bit codes as exact u8 for int8 tensor cores (m16n8k32): lane (g, t)'s rows g and g + 8 are codes
// 16m + 2g and 16m + 2g + 1 of four chunks, which share byte 4m + g / 2 of each. One register gathers
// that byte of the four chunks' word m (k-slots 4t .. 4t + 3 or 16 + 4t .. 16 + 4t + 3, in order), and one
// AND a row keeps the row's fields in place: f 2^pos, weighed back with the accumulators.
struct ByteRows {
  unsigned select;                // byte g / 2 of the first and second word, in the low two bytes
  std::uint32_t mask_g, mask_g8;  // row g's and row g + 8's fields in every byte
  int pos_g, pos_g8;              // their lowest bit: the rows' weight 2^pos

  __device__ __forceinline__ explicit ByteRows(int g) {
    const unsigned b = static_cast<unsigned>(g) >> 1;
    select = b | ((4 + b) << 4);
    pos_g = 4 * (g & 1), pos_g8 = pos_g + 2;
    mask_g = 0x03030303u << pos_g, mask_g8 = 0x03030303u << pos_g8;
  }
  // Byte g / 2 of words w0..w3 (one per chunk), in order.
  __device__ __forceinline__ std::uint32_t gather(std::uint32_t w0, std::uint32_t w1, std::uint32_t w2, std::uint32_t w3) const {
    return __byte_perm(__byte_perm(w0, w1, select), __byte_perm(w2, w3, select), 0x5410);
  }
};

// Whether an outer kernel takes the int8 form (ByteRows): 2-bit codes and one query head. GQA groups
// keep the fp16 form, where the heads share B's columns.
template <int Bits, int Heads>
inline constexpr bool kInt8 = Bits == 2 && Heads == 1;

// An int8 B's s8 parts: x = 256 s8_upper(x) + lo with lo the sign-extended low byte of x, so
// x = 65536 hi + 256 mid + lo for mid = s8_upper(x), hi = s8_upper(mid), all three in s8 while
// |x| <= 127 (65536 + 256 + 1).
__device__ __forceinline__ int s8_upper(int x) { return (x + 128) >> 8; }

}  // namespace kvq::gpu::outer_mma

// The launchers' dispatch: bits B (2, 4, 8), head_dim D, head bucket H (1, 2, 4) of `group`;
// cudaErrorInvalidValue for anything else.
#define KVQ_DISPATCH_OUTER_MMA(shape, group, B, D, H, ...)                                                         \
  switch ((shape).bits) {                                                                                         \
    case 2: { constexpr int B = 2; KVQ_DISPATCH_OUTER_MMA_SHAPE(shape, group, D, H, __VA_ARGS__) break; }        \
    case 4: { constexpr int B = 4; KVQ_DISPATCH_OUTER_MMA_SHAPE(shape, group, D, H, __VA_ARGS__) break; }        \
    case 8: { constexpr int B = 8; KVQ_DISPATCH_OUTER_MMA_SHAPE(shape, group, D, H, __VA_ARGS__) break; }        \
    default: return cudaErrorInvalidValue;                                                                        \
  }
#define KVQ_DISPATCH_OUTER_MMA_SHAPE(shape, group, D, H, ...) \
  KVQ_DISPATCH_HEAD_DIM((shape).head_dim, D, KVQ_DISPATCH_HEAD_BUCKET(group, H, if constexpr (H <= ::kvq::gpu::outer_mma::kMaxHeads) { __VA_ARGS__ }))
