#pragma once
// Packed regions on the device, in the core/packed.h layout. A launch covers `regions`
// regions of the same shape (one per batch x kv head), laid out back to back at the shape's
// allocated size (capacity tokens, or tokens): region r's codes start at codes + r * code_stride(),
// its scales at r * group_stride(), and (hybrid) its compact zero points at zeros + zero_offset[r],
// its zero_base at r * zero_block_stride().
#include <cstdint>

namespace kvq::gpu {

enum class GroupMode : int { sym = 0, asym = 1, hybrid = 2 };

struct RegionShape {
  int tokens = 0;        // quantized tokens per region
  int head_dim = 128;
  int bits = 2;
  int group_size = 32;
  bool channel_axis = true;  // groups along channels (keys' inner layout) or tokens (values')
  GroupMode mode = GroupMode::sym;
  bool twos = false;         // symmetric levels
  int hybrid_asym_bits = 1;
  bool meta_fp16 = true;
  int capacity = 0;          // tokens allocated per region, for regions that grow (0: tokens)

  // The shape at its allocated size: regions are laid out at this shape's sizes (the *_stride below).
  __host__ __device__ RegionShape allocated() const {
    RegionShape a = *this;
    if (capacity > tokens) a.tokens = capacity;
    return a;
  }

  // Sizes, in elements, of one region's arrays.
  __host__ __device__ long long groups() const { return static_cast<long long>(tokens) * head_dim / group_size; }
  __host__ __device__ long long code_words() const {
    const long long chunks = channel_axis ? static_cast<long long>(tokens) * (head_dim / 32)
                                          : static_cast<long long>((tokens + 31) / 32) * head_dim;
    return chunks * bits;
  }
  __host__ __device__ int zero_block_tokens() const { return channel_axis ? 32 : group_size; }
  __host__ __device__ long long zero_blocks() const { return (tokens + zero_block_tokens() - 1) / zero_block_tokens(); }
  // Distances between consecutive regions' arrays, in elements.
  __host__ __device__ long long code_stride() const { return allocated().code_words(); }
  __host__ __device__ long long group_stride() const { return allocated().groups(); }
  __host__ __device__ long long zero_block_stride() const { return allocated().zero_blocks(); }
};

// Device pointers of `regions` packed regions. scales/zeros hold fp16 bit patterns (uint16) or fp32 bit
// patterns (uint32) as meta_fp16 says; zeros: every group for asym, compact for hybrid, unused for sym.
struct DeviceRegions {
  RegionShape shape;
  int regions = 1;
  std::uint32_t* codes = nullptr;          // [regions * code_words]
  void* scales = nullptr;                  // [regions * groups]
  void* zeros = nullptr;                   // asym: [regions * groups]; hybrid: compact
  std::uint32_t* zero_offset = nullptr;    // hybrid: [regions], first zero of each region
  std::uint32_t* zero_base = nullptr;      // hybrid: [regions * zero_blocks], relative to the region
};

// Whether every region's codes, scales and (asym) zero points start on 16 bytes, as the cp.async
// stages of the kernels need (16-byte pieces): base pointers and the strides between regions.
inline bool aligned16(const DeviceRegions& r) {
  const auto on16 = [](const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; };
  const long long meta = r.shape.meta_fp16 ? 2 : 4;
  const bool zeros = r.shape.mode != GroupMode::asym || on16(r.zeros);
  return on16(r.codes) && on16(r.scales) && zeros && r.shape.code_stride() * 4 % 16 == 0 && r.shape.group_stride() * meta % 16 == 0;
}

}  // namespace kvq::gpu
