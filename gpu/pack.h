#pragma once
// Quantize + pack on the GPU, bit-identical to cpu_ref::PackedRegion::append on a fresh
// region (codes, scales with the hybrid mode bit, zero points, zero_base): both run the
// group arithmetic of core/quant_math.h.
#include <cuda_runtime.h>

#include "gpu/region.h"

namespace kvq::gpu {

struct PackParams {
  // rows: [regions][tokens][head_dim] fp32, device. For token-axis groups tokens % group_size == 0.
  const float* rows = nullptr;
  DeviceRegions out;  // allocated by the caller, sizes from out.shape; the launcher zeroes the codes
};

// Returns the first CUDA error instead of aborting; cudaErrorInvalidValue for a bad shape.
cudaError_t pack(const PackParams& params, cudaStream_t stream = nullptr);

}  // namespace kvq::gpu
