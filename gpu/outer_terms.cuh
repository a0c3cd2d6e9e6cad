#pragma once
// Shared by the outer-layout GEMVs: a group's terms in the unit-code form of code_slices.cuh (the CUDA-core
// scores_outer.cu, outputs_outer.cu), and a token's weight in the values' products (those and
// outputs_outer_mma.cu).
#include "core/packed.h"
#include "gpu/gemv.h"
#include "gpu/meta.cuh"
#include "gpu/region.h"

namespace kvq::gpu::outer {

inline constexpr int kWarps = 4;  // warps per block

// x^ = a u + c for unit code u = 1 + f / 2^Bits: a = |s| 2^Bits, c = z_eff - a.
struct GroupTerms {
  float a = 0.0f, c = 0.0f;
};

// Terms of a group from its stored |scale|, mode bit and zero point (read only for asym groups and
// hybrid groups with the bit set; ignored otherwise).
template <int Bits>
__device__ __forceinline__ GroupTerms group_terms(const RegionShape& s, float scale, bool sign, float stored_zero) {
  const float a = scale * static_cast<float>(1 << Bits);
  const bool asym = s.mode == GroupMode::asym || (s.mode == GroupMode::hybrid && sign);
  const float zero = asym ? stored_zero : -static_cast<float>(packed::sym_offset(Bits, s.twos)) * scale;
  return {a, zero - a};
}

// The weight of a probs entry x whose row's softmax max is m (read only with p.row_stats): x, or
// e^(score_scale x - m) where probs holds raw scores (OutputsParams::row_stats).
__device__ __forceinline__ float weight(const OutputsParams& p, float x, float m) { return p.row_stats ? __expf(x * p.score_scale - m) : x; }

// Row `row`'s softmax max where p.row_stats is given (0 otherwise).
__device__ __forceinline__ float row_max(const OutputsParams& p, long long row) { return p.row_stats ? p.row_stats[2 * row] : 0.0f; }

}  // namespace kvq::gpu::outer
