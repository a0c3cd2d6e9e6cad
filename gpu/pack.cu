#include <cub/device/device_scan.cuh>

#include "core/packed.h"
#include "core/quant_math.h"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/pack.h"

namespace kvq::gpu {
namespace {

__device__ std::uint32_t meta_bits(float value, bool fp16, bool sign) {
  if (fp16) {
    std::uint16_t h = __half_as_ushort(__float2half_rn(value));
    return sign ? (h | packed::kHalfSignBit) : h;
  }
  const std::uint32_t f = __float_as_uint(value);
  return sign ? (f | packed::kFloatSignBit) : f;
}

__device__ void store_meta(void* array, long long i, std::uint32_t bits, bool fp16) {
  if (fp16) {
    static_cast<std::uint16_t*>(array)[i] = static_cast<std::uint16_t>(bits);
  } else {
    static_cast<std::uint32_t*>(array)[i] = bits;
  }
}

// One thread per new group: quantize with core/quant_math.h, OR the codes in, store the scale; asym
// groups store their zero point (hybrid: into a per-group scratch slot, compacted afterwards).
__global__ void pack_groups(const float* rows, DeviceRegions out, int at, std::uint32_t* asym_flag, std::uint32_t* zero_scratch) {
  wait_for_prior_kernels();
  const RegionShape s = out.shape;
  const int d = s.head_dim, G = s.group_size, count = s.tokens - at;
  const long long groups = static_cast<long long>(count) * d / G;  // new groups per region
  const long long g = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const int r = blockIdx.y;
  if (g >= groups) return;
  const float* region_rows = rows + static_cast<long long>(r) * count * d;
  std::uint32_t* codes = out.codes + r * s.code_stride();
  qmath::GroupParams p;
  p.mode = static_cast<qmath::GroupMode>(static_cast<int>(s.mode));
  p.bits = s.bits;
  p.twos = s.twos;
  p.hybrid_asym_bits = s.hybrid_asym_bits;
  p.meta_fp16 = s.meta_fp16;
  std::uint8_t fields[128];
  qmath::GroupQuant q;
  if (s.channel_axis) {
    const long long local = g / (d / G), t = at + local;
    const int c0 = static_cast<int>(g % (d / G)) * G;
    q = qmath::quantize_group(region_rows + local * d + c0, 1, G, p, fields);
    for (int i = 0; i < G; ++i) {
      const int c = c0 + i;
      const packed::CodePlacement pl = packed::place_code(s.bits, c % 32, fields[i]);
      std::uint32_t* chunk = codes + (t * (d / 32) + c / 32) * s.bits;
      for (int k = 0; k < pl.count; ++k) atomicOr(chunk + pl.word[k], pl.bits[k]);
    }
  } else {
    const long long blk = g / d;
    const int c = static_cast<int>(g % d);
    q = qmath::quantize_group(region_rows + blk * G * d + c, d, G, p, fields);
    for (int i = 0; i < G; ++i) {
      const long long t = at + blk * G + i;
      const packed::CodePlacement pl = packed::place_code(s.bits, static_cast<int>(t % 32), fields[i]);
      std::uint32_t* chunk = codes + ((t / 32) * d + c) * s.bits;
      for (int k = 0; k < pl.count; ++k) atomicOr(chunk + pl.word[k], pl.bits[k]);
    }
  }
  // Group indices run on from the groups already packed: at * d / G of them.
  const long long index = r * s.group_stride() + static_cast<long long>(at) * d / G + g;
  const bool hybrid = s.mode == GroupMode::hybrid;
  store_meta(out.scales, index, meta_bits(q.scale, s.meta_fp16, hybrid && q.asym), s.meta_fp16);
  if (s.mode == GroupMode::asym) store_meta(out.zeros, index, meta_bits(q.zero, s.meta_fp16, false), s.meta_fp16);
  if (hybrid) {
    asym_flag[r * groups + g] = q.asym ? 1u : 0u;
    zero_scratch[r * groups + g] = meta_bits(q.zero, s.meta_fp16, false);
  }
}

// Where region r's zero points start, and how many it holds before this pack.
__device__ __forceinline__ long long zero_start(const DeviceRegions& out, int at, const std::uint32_t* position, long long groups, long long r) {
  if (at > 0) return out.zero_offset[r];
  return out.shape.capacity > 0 ? r * out.shape.group_stride() : static_cast<long long>(position[r * groups]);
}

// Hybrid: scatter each asymmetric group's zero point to its compact slot, and record each region's
// first zero (fresh regions) and each new zero-block's base (relative to its region).
__global__ void place_zeros(DeviceRegions out, int at, const std::uint32_t* zero_count, const std::uint32_t* asym_flag, const std::uint32_t* position,
                            const std::uint32_t* zero_scratch, long long groups, long long total) {
  wait_for_prior_kernels();
  const RegionShape s = out.shape;
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const long long r = i / groups, g = i % groups;
  const long long held = at > 0 ? zero_count[r] : 0;
  const long long relative = held + position[i] - position[r * groups];
  if (asym_flag[i]) store_meta(out.zeros, zero_start(out, at, position, groups, r) + relative, zero_scratch[i], s.meta_fp16);
  if (g == 0 && at == 0) out.zero_offset[r] = static_cast<std::uint32_t>(zero_start(out, at, position, groups, r));
  const long long index = static_cast<long long>(at) * s.head_dim / s.group_size + g;  // within the region
  const long long groups_per_block = static_cast<long long>(s.zero_block_tokens()) * s.head_dim / s.group_size;
  if (index % groups_per_block == 0) out.zero_base[r * s.zero_block_stride() + index / groups_per_block] = static_cast<std::uint32_t>(relative);
}

// Hybrid: each region's zero-point count after this pack (one thread per region, after place_zeros).
__global__ void count_zeros(std::uint32_t* zero_count, int at, int regions, const std::uint32_t* asym_flag, const std::uint32_t* position, long long groups) {
  wait_for_prior_kernels();
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= regions) return;
  const long long last = (r + 1) * groups - 1;
  zero_count[r] = (at > 0 ? zero_count[r] : 0u) + position[last] + asym_flag[last] - position[r * groups];
}

}  // namespace

cudaError_t pack(const PackParams& params, cudaStream_t stream) {
  const RegionShape& s = params.out.shape;
  const int at = params.at;
  const bool append_ok = at == 0 || (s.capacity >= s.tokens && (s.mode != GroupMode::hybrid || params.zero_count));
  if (!bits_built(s.bits) || !group_size_built(s.group_size) || s.head_dim % 32 != 0 || at < 0 || s.tokens < at || params.out.regions < 1 || !append_ok ||
      (s.capacity > 0 && s.capacity < s.tokens) || (s.channel_axis && s.head_dim % s.group_size != 0) ||
      (!s.channel_axis && (s.tokens % s.group_size != 0 || at % s.group_size != 0))) {
    return cudaErrorInvalidValue;
  }
  if (s.tokens == at) return cudaSuccess;
  const DeviceRegions& out = params.out;
  // Zero the new codes of every region: whole rows (channel axis), or the tiles the new tokens open
  // (token axis; a tile begun by an earlier pack was zeroed then and holds its codes).
  const long long first = s.channel_axis ? static_cast<long long>(at) * (s.head_dim / 32) * s.bits
                                         : static_cast<long long>((at + 31) / 32) * s.head_dim * s.bits;
  const long long end = s.code_words();
  if (end > first) {
    KVQ_CUDA_TRY(cudaMemset2DAsync(out.codes + first, sizeof(std::uint32_t) * s.code_stride(), 0, sizeof(std::uint32_t) * (end - first), out.regions,
                                   stream));
  }
  const long long groups = static_cast<long long>(s.tokens - at) * s.head_dim / s.group_size;
  const long long total = static_cast<long long>(out.regions) * groups;
  std::uint32_t *flag = nullptr, *position = nullptr, *scratch = nullptr;
  void* temp = nullptr;
  std::size_t temp_bytes = 0;
  if (s.mode == GroupMode::hybrid) {
    KVQ_CUDA_TRY(cudaMallocAsync(&flag, sizeof(std::uint32_t) * total, stream));
    KVQ_CUDA_TRY(cudaMallocAsync(&position, sizeof(std::uint32_t) * total, stream));
    KVQ_CUDA_TRY(cudaMallocAsync(&scratch, sizeof(std::uint32_t) * total, stream));
  }
  const dim3 block(128);
  const dim3 grid(static_cast<unsigned>((groups + 127) / 128), static_cast<unsigned>(out.regions));
  KVQ_CUDA_TRY(launch_kernel(pack_groups, grid, block, 0, stream, params.rows, out, at, flag, scratch));
  if (s.mode == GroupMode::hybrid) {
    // Compact zero points: an exclusive scan of the asym flags over every region's new groups in order.
    KVQ_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, flag, position, total, stream));
    KVQ_CUDA_TRY(cudaMallocAsync(&temp, temp_bytes, stream));
    KVQ_CUDA_TRY(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, flag, position, total, stream));
    KVQ_CUDA_TRY(launch_kernel(place_zeros, dim3(static_cast<unsigned>((total + 255) / 256)), dim3(256), 0, stream, out, at, params.zero_count, flag, position,
                               scratch, groups, total));
    if (params.zero_count) {
      KVQ_CUDA_TRY(launch_kernel(count_zeros, dim3(static_cast<unsigned>((out.regions + 127) / 128)), dim3(128), 0, stream, params.zero_count, at, out.regions,
                                 flag, position, groups));
    }
    KVQ_CUDA_TRY(cudaFreeAsync(temp, stream));
    KVQ_CUDA_TRY(cudaFreeAsync(flag, stream));
    KVQ_CUDA_TRY(cudaFreeAsync(position, stream));
    KVQ_CUDA_TRY(cudaFreeAsync(scratch, stream));
  }
  return cudaSuccess;
}

}  // namespace kvq::gpu
