#pragma once
// Quantize + pack on the GPU, bit-identical to cpu_ref::PackedRegion::append (codes, scales with
// the hybrid mode bit, zero points, zero_base) on a fresh region or, with `at`, appended to one:
// both run the group arithmetic of core/quant_math.h.
#include <cuda_runtime.h>

#include <cstdint>

#include "gpu/region.h"

namespace kvq::gpu {

struct PackParams {
  // rows: [regions][out.shape.tokens - at][head_dim] fp32, device: the tokens [at, out.shape.tokens)
  // of every region. Token-axis groups take whole groups (at and tokens multiples of group_size).
  const float* rows = nullptr;
  // Allocated by the caller at out.shape's allocated size; the launcher zeroes the new codes.
  DeviceRegions out;
  // Appending (decode flushes): tokens [0, at) are packed already and kept, which needs
  // out.shape.capacity >= out.shape.tokens. Regions with a capacity own group_stride() zero-point
  // slots each (zero_offset[r] = r * group_stride(), set when at == 0); without one, hybrid zero
  // points are compact across regions as cpu_ref lays out one region after another.
  int at = 0;
  // Hybrid zero points each region holds, [regions], device: read when at > 0 (then required) and
  // updated; may be null when at == 0.
  std::uint32_t* zero_count = nullptr;
};

// Returns the first CUDA error instead of aborting; cudaErrorInvalidValue for a bad shape.
cudaError_t pack(const PackParams& params, cudaStream_t stream = nullptr);

}  // namespace kvq::gpu
