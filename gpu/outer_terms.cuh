#pragma once
// Shared by the outer-layout GEMVs (scores_outer.cu, outputs_outer.cu): a group's terms in the
// unit-code form of code_slices.cuh.
#include "core/packed.h"
#include "gpu/meta.cuh"
#include "gpu/region.h"

namespace kvq::gpu::outer {

inline constexpr int kWarps = 4;  // warps per block

// x^ = a u + c for unit code u = 1 + f / 2^Bits: a = |s| 2^Bits, c = z_eff - a.
struct GroupTerms {
  float a = 0.0f, c = 0.0f;
};

// Terms of group `index` whose stored |scale| and sign bit were read already; `zero_index` is where
// its compact zero point sits if it is a hybrid asymmetric group.
template <int Bits>
__device__ __forceinline__ GroupTerms group_terms(const DeviceRegions& m, float scale, bool sign, long long index, long long zero_index) {
  const RegionShape& s = m.shape;
  const float a = scale * static_cast<float>(1 << Bits);
  float zero = -static_cast<float>(packed::sym_offset(Bits, s.twos)) * scale;
  if (s.mode == GroupMode::asym) {
    zero = zero_value(m.zeros, index, s.meta_fp16);
  } else if (s.mode == GroupMode::hybrid && sign) {
    zero = zero_value(m.zeros, zero_index, s.meta_fp16);
  }
  return {a, zero - a};
}

}  // namespace kvq::gpu::outer
