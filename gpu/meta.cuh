#pragma once
// Reading stored metadata on the device (core/packed.h): scales with the hybrid mode bit in
// their sign, zero points; fp16 bit patterns or fp32 values as the region's shape says.
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "core/packed.h"
#include "gpu/region.h"

namespace kvq::gpu {

// |scale| of entry i, and its sign bit (hybrid: set means the asymmetric arm).
__device__ __forceinline__ float meta_value(const void* array, long long i, bool fp16, bool& sign) {
  if (fp16) {
    const std::uint16_t h = static_cast<const std::uint16_t*>(array)[i];
    sign = (h & packed::kHalfSignBit) != 0;
    return __half2float(__ushort_as_half(static_cast<std::uint16_t>(h & 0x7fffu)));
  }
  const std::uint32_t f = static_cast<const std::uint32_t*>(array)[i];
  sign = (f & packed::kFloatSignBit) != 0;
  return __uint_as_float(f & 0x7fffffffu);
}

// Zero point i.
__device__ __forceinline__ float zero_value(const void* array, long long i, bool fp16) {
  return fp16 ? __half2float(static_cast<const __half*>(array)[i]) : static_cast<const float*>(array)[i];
}

// The same from raw bits whose width is a template axis (Meta: std::uint16_t for fp16,
// std::uint32_t for fp32), for kernels built per metadata precision.
template <class Meta>
__device__ __forceinline__ float magnitude(Meta raw) {
  if constexpr (sizeof(Meta) == 2) return __half2float(__ushort_as_half(static_cast<std::uint16_t>(raw & 0x7fffu)));
  else return __uint_as_float(raw & 0x7fffffffu);
}
// The word is compared whole, through an empty asm that hides a 16-bit origin: a test of bit 15
// alone is narrowed to 16-bit operations, three instructions instead of one.
template <class Meta>
__device__ __forceinline__ bool sign_bit(Meta raw) {
  std::uint32_t w = raw;
  asm("" : "+r"(w));
  return w >= (1u << (8 * sizeof(Meta) - 1));
}
template <class Meta>
__device__ __forceinline__ float plain(Meta raw) {
  if constexpr (sizeof(Meta) == 2) return __half2float(__ushort_as_half(raw));
  else return __uint_as_float(raw);
}

// A group's |scale| and effective zero point from its stored entries: an asymmetric group's (asym,
// or hybrid with the sign bit set) is its stored zero point, a symmetric one's -offset |scale|
// (offset: the code offset, packed::sym_offset).
template <class Meta>
__device__ __forceinline__ void scale_and_zero(Meta scale_raw, Meta zero_raw, GroupMode mode, float offset, float& scale, float& zero) {
  scale = magnitude(scale_raw);
  const bool asym = mode == GroupMode::asym || (mode == GroupMode::hybrid && sign_bit(scale_raw));
  zero = asym ? plain(zero_raw) : -offset * scale;
}

// Two fp16 entries in one register (entry 0 in the low half) as floats, in one paired conversion;
// magnitude_pair: both |scale|s, with one mask.
__device__ __forceinline__ float2 half_pair(std::uint32_t bits) {
  __half2 h;
  std::memcpy(&h, &bits, sizeof(h));
  return __half22float2(h);
}
__device__ __forceinline__ float2 magnitude_pair(std::uint32_t scales) { return half_pair(scales & 0x7fff7fffu); }
// scale_and_zero for two fp16 groups whose entries share one register each (group 0 in the low half).
__device__ __forceinline__ void scale_and_zero_pair(std::uint32_t scales, std::uint32_t zeros, GroupMode mode, float offset, float (&scale)[2],
                                                    float (&zero)[2]) {
  const float2 s = magnitude_pair(scales), z = half_pair(zeros);
  const bool hybrid = mode == GroupMode::hybrid, all = mode == GroupMode::asym;
  scale[0] = s.x, scale[1] = s.y;
  zero[0] = all || (hybrid && (scales & 0x8000u) != 0u) ? z.x : -offset * s.x;
  zero[1] = all || (hybrid && (scales & 0x80000000u) != 0u) ? z.y : -offset * s.y;
}

// base + i in one wide multiply-add (compact zero points): written as pointer arithmetic, the
// compiler widens the index and adds it in 64 bits.
template <class Meta>
__device__ __forceinline__ const Meta* entry_at(const Meta* base, unsigned i) {
  std::uint64_t at;
  asm("mad.wide.u32 %0, %1, %2, %3;" : "=l"(at) : "r"(i), "r"(static_cast<unsigned>(sizeof(Meta))), "l"(base));
  return reinterpret_cast<const Meta*>(at);
}

// Hybrid: one zero-block's compact zero points (core/packed.h: one per asymmetric group, in the
// block's entry order) put at their entries, for a warp. Entry e < count is asymmetric where
// scales[e] has its sign bit set; the compact ones start at zeros + base. load() sends every load
// out and store() writes them, so that a caller can load several blocks before it stores one.
// Rounds: entries / 32, as a constant.
template <int Rounds, class Meta>
struct BlockZeros {
  Meta z[Rounds];
  bool asym[Rounds];

  __device__ __forceinline__ void load(const Meta* scales, const Meta* zeros, int base, int count) {
    const int lane = threadIdx.x & 31;
    int running = 0;
#pragma unroll
    for (int i = 0; i < Rounds; ++i) {
      const int e = 32 * i + lane;
      asym[i] = e < count && sign_bit(scales[e]);
      const unsigned mask = __ballot_sync(0xffffffffu, asym[i]);
      z[i] = asym[i] ? __ldg(zeros + base + running + __popc(mask & ((1u << lane) - 1u))) : Meta(0);
      running += __popc(mask);
    }
  }
  __device__ __forceinline__ void store(Meta* out) const {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < Rounds; ++i)
      if (asym[i]) out[32 * i + lane] = z[i];
  }
};

}  // namespace kvq::gpu
