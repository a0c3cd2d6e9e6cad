#pragma once
// Region r's arrays as the kernels read them (gpu/region.h's layout): one place that knows where a
// region starts in each array, so that every kernel offsets them alike.
#include <cstdint>

#include "gpu/region.h"

namespace kvq::gpu {

// Meta: std::uint16_t (fp16 bit patterns) or std::uint32_t (fp32), as the region's shape says.
template <class Meta>
struct RegionArrays {
  const std::uint32_t* codes;      // [code_words]
  const Meta* scales;              // [groups]
  const Meta* zeros;               // asym: [groups]; hybrid: the region's compact zero points; sym: unused
  const std::uint32_t* zero_base;  // hybrid: [zero_blocks], relative to zeros; otherwise null
};

// What the kernel's arguments alone give: codes, scales, asym zero points (hybrid: zeros is the start
// of every region's compact zero points, zero_base null). No global read, so a kernel may take it
// before wait_for_prior_kernels.
template <class Meta>
__device__ __forceinline__ RegionArrays<Meta> argument_arrays(const DeviceRegions& d, int r) {
  const RegionShape& s = d.shape;
  RegionArrays<Meta> a;
  a.codes = d.codes + static_cast<long long>(r) * s.code_stride();
  a.scales = static_cast<const Meta*>(d.scales) + static_cast<long long>(r) * s.group_stride();
  a.zeros = static_cast<const Meta*>(d.zeros);
  a.zero_base = nullptr;
  if (s.mode == GroupMode::asym) a.zeros += static_cast<long long>(r) * s.group_stride();
  return a;
}

// Every array; reads zero_offset[r] for hybrid regions: a global load.
template <class Meta>
__device__ __forceinline__ RegionArrays<Meta> region_arrays(const DeviceRegions& d, int r) {
  const RegionShape& s = d.shape;
  RegionArrays<Meta> a = argument_arrays<Meta>(d, r);
  if (s.mode == GroupMode::hybrid) a.zeros += d.zero_offset[r], a.zero_base = d.zero_base + static_cast<long long>(r) * s.zero_block_stride();
  return a;
}

}  // namespace kvq::gpu
