#pragma once
// Packed regions on the device, in the core/packed.h layout. A launch covers `regions`
// regions of the same shape (one per batch x kv head), laid out back to back: region r's
// codes start at codes + r * codes_stride, its scales at r * groups, and (hybrid) its
// compact zero points at zeros + zero_offset[r], its zero_base at r * zero_blocks.
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

  // Sizes, in elements, of one region's arrays.
  __host__ __device__ long long groups() const { return static_cast<long long>(tokens) * head_dim / group_size; }
  __host__ __device__ long long code_words() const {
    const long long chunks = channel_axis ? static_cast<long long>(tokens) * (head_dim / 32)
                                          : static_cast<long long>((tokens + 31) / 32) * head_dim;
    return chunks * bits;
  }
  __host__ __device__ int zero_block_tokens() const { return channel_axis ? 32 : group_size; }
  __host__ __device__ long long zero_blocks() const { return (tokens + zero_block_tokens() - 1) / zero_block_tokens(); }
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

}  // namespace kvq::gpu
