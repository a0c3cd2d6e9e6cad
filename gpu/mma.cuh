#pragma once
// Tensor-core building blocks shared by the inner-layout kernels (scores over channel-axis keys,
// outputs over token-axis values, the fused attention): mma.sync m16n8k16 with fp16 in and fp32
// out, and the decode of one packed 32-code chunk (core/packed.h) into A fragments.
//
// Both products have the same shape: a row (a key token, or a value channel) owns one 32-code chunk
// per 32 steps of the reduction axis (channels for keys, tokens for values), and the other operand
// (q, or p) is the same for every row. So A = codes (16 rows x 16 reduction steps) and B = the
// vector, split into fp16 hi + lo parts (~22 bits kept) and scaled by a power of two.
// Codes become exact fp16: 2-bit codes as 1 + f/4 and 3-bit ones as 1 + f/16 (a split code's parts
// as 1 + lo/8 and 1 + b/2) by placing f in the mantissa (one shift and one LOP3 per two codes; the
// constant 1 comes back through the group's sum of B), 4- and 8-bit codes as f with the 1024-magic
// trick. The reduction steps may be visited in any order, so each lane
// decodes the pairs its fragment slots make cheap and B is laid out in the same order (phys()).
#include <cuda_fp16.h>

#include <cstdint>

namespace kvq::gpu::mma {

// k-steps (16 reduction steps each) per 32-code chunk: 2; 3 for 3-bit codes, whose split codes take
// two slots each (core/packed.h), and one pair of slots a lane is left zero.
template <int Bits>
inline constexpr int kSteps = Bits == 3 ? 3 : 2;

// 3-bit codes: slot pair (st, p) is group 2st + p of a lane's pairs, the four lanes of a quad taking
// the same form from the same word (lane t's own bits by a rotation by t): groups 0-2 the whole codes
// of word 0-2 (lane t: code 4 * group + t, of byte t / 2 at bits 2 + 3 (t % 2)), group 3 the split
// codes' low bits (lane t: code 12 + t, word t / 2, byte t % 2), group 4 their bit 2 (lane t: code
// 12 + 2 (t % 2) + t / 2, at bit t % 2 of byte t / 2 of word 2), group 5 nothing. Codes c and c + 16
// share a pair (bytes 0-1 and 2-3).
__host__ __device__ constexpr int bits3_code(int group, int t) {
  return group < 3 ? 4 * group + t : group == 3 ? 12 + t : 12 + 2 * (t & 1) + (t >> 1);
}

// Position (0..31, within its chunk) of fragment slot e (0..3: k = 2t, 2t+1, 2t+8, 2t+9) of lane t
// (0..3) in k-step st, for the decode in decode_pair().
template <int Bits>
__host__ __device__ __forceinline__ int phys(int st, int t, int e) {
  if (Bits == 2) {
    const int k = t + (e >= 2 ? 4 : 0);
    return 16 * st + k + (e & 1) * 8;  // (w >> 2k) holds codes k, k+8 of the half-chunk
  }
  if (Bits == 3) {
    const int group = 2 * st + (e >> 1);
    return group < 5 ? bits3_code(group, t) + (e & 1) * 16 : 0;  // group 5: B is zero
  }
  if (Bits == 4) return 16 * st + (e >= 2 ? 8 : 0) + t + (e & 1) * 4;  // (w >> 4t): codes t, t+4 of a word
  return 16 * st + 4 * t + (e >= 2 ? 1 : 0) + (e & 1) * 2;             // 8 bits: (w >> 8j): codes j, j+2
}

// Weight B carries in slot pair (st, p): 4 for 2-bit codes (A = 1 + f/4); for 3-bit ones 16 for whole
// codes (1 + f/16), 8 for a split code's low bits (1 + lo/8) and 8 for its bit 2 (1 + b/2, worth 4 b),
// 0 for the empty group; 4/8-bit codes are exact integers (weight 1).
template <int Bits>
__host__ __device__ __forceinline__ float weight(int st, int p) {
  if (Bits == 3) return 2 * st + p < 3 ? 16.0f : 2 * st + p < 5 ? 8.0f : 0.0f;
  return Bits == 2 ? 4.0f : 1.0f;
}
// The constant the decode adds, in units of the group's sum of the (unweighted) vector: A's 1 times
// the weights a code carries: 4 for 2 bits, 16 for 3 bits (whole codes 16, split ones 8 + 8).
template <int Bits>
inline constexpr float kPlaneConstant = Bits == 2 ? 4.0f : Bits == 3 ? 16.0f : 0.0f;

// A k-step closes a run of reduction steps: 16 for 2/4/8 bits; a 3-bit chunk's steps mix its halves,
// so it closes only after its last step, covering all 32.
template <int Bits>
__host__ __device__ __forceinline__ int closes(int st) {
  return Bits == 3 ? (st == kSteps<3> - 1 ? 32 : 0) : 16;
}

// The fp16 pair for fragment slots (2p, 2p+1) of lane t in k-step st of one chunk.
template <int Bits>
__device__ __forceinline__ std::uint32_t decode_pair(const std::uint32_t* chunk, int st, int t, int p) {
  if (Bits == 2) {
    // Codes k, k+8 (k = t + 4p) sit at bits 2k, 2k+16; move them to bits 8, 24: 1 + f/4.
    const std::uint32_t w = chunk[st];
    const std::uint32_t moved = p == 0 ? w << (8 - 2 * t) : w >> (2 * t);
    return (moved & 0x03000300u) | 0x3C003C00u;
  }
  if (Bits == 3) {
    // bits3_code's groups: the field at bit P of the low 16-bit half (its partner at P + 16) rotated
    // to mantissa bit 6 (whole codes), 7 (low bits) or 9 (bit 2); bits that wrap fall outside the mask.
    const int group = 2 * st + p;
    if (group < 3) return (__funnelshift_r(chunk[group], chunk[group], 8 * (t >> 1) + 3 * (t & 1) - 4) & 0x01C001C0u) | 0x3C003C00u;
    if (group == 3) {
      const std::uint32_t w = t < 2 ? chunk[0] : chunk[1];
      return (__funnelshift_r(w, w, 8 * (t & 1) - 7) & 0x01800180u) | 0x3C003C00u;
    }
    if (group == 4) return (__funnelshift_r(chunk[2], chunk[2], 8 * (t >> 1) + (t & 1) - 9) & 0x02000200u) | 0x3C003C00u;
    return 0x3C003C00u;  // 1.0 against a zero B
  }
  const std::uint32_t bits = Bits == 4 ? (chunk[2 * st + p] >> (4 * t)) & 0x000F000Fu : (chunk[4 * st + t] >> (8 * p)) & 0x00FF00FFu;
  std::uint32_t out;  // 1024 + f minus 1024, exact
  asm("sub.f16x2 %0, %1, %2;" : "=r"(out) : "r"(bits | 0x64006400u), "r"(0x64006400u));
  return out;
}

// c += A (16x16, row) * B (16x8, col); fp32 accumulate. Not volatile: it has no side effects, and the
// scheduler may then move independent loads across it.
__device__ __forceinline__ void mma(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ std::uint32_t pack_half2(__half lo, __half hi) {
  return static_cast<std::uint32_t>(__half_as_ushort(lo)) | (static_cast<std::uint32_t>(__half_as_ushort(hi)) << 16);
}

// B's 8 columns: a GQA group of up to 4 heads puts head h's hi and lo parts in columns 2h, 2h+1, so
// one mma covers both and lane t's accumulator pair (columns 2t, 2t+1) sums to head t. Larger groups
// take two passes (hi, then lo), column h = head h, and lane t holds heads 2t, 2t+1.
template <int Group>
inline constexpr int kPasses = Group <= 4 ? 1 : 2;

// Head and part (0 hi, 1 lo) of B's column n in pass `pass`; head >= Group means a zero column.
template <int Group>
__device__ __forceinline__ void column(int n, int pass, int& head, int& part) {
  if (Group <= 4) {
    head = n >> 1, part = n & 1;
  } else {
    head = n, part = pass;
  }
}

// fp16 part `part` of v (v ~ hi + lo).
__device__ __forceinline__ __half split_part(float v, int part) {
  const __half hi = __float2half_rn(v);
  return part == 0 ? hi : __float2half_rn(v - __half2float(hi));
}

// Power of two bringing max|v| near 2^8, so fp16 holds the largest entry with room for the weights.
__device__ __forceinline__ float fp16_range_scale(float max_abs) {
  return max_abs > 0.0f ? exp2f(static_cast<float>(8 - ilogbf(max_abs))) : 1.0f;
}

}  // namespace kvq::gpu::mma
