#pragma once
// Tensor-core outputs over token-axis values (internal to gpu/; outputs_inner picks it).
#include <cuda_runtime.h>

#include "gpu/gemv.h"

namespace kvq::gpu {

// Whether outputs_mma handles the shape: bits 2/3/4/8, head_dim 64/128, GQA group up to 8, token-axis
// groups of 32, 64 or 128 tokens (a 32-token chunk must lie in one group), arrays on 16 bytes
// (aligned16: the warps copy stretches with cp.async).
bool outputs_mma_supported(const DeviceRegions& values, int group);
// Splits the sequence into at most params.splits runs of whole 128-token stretches (at most one wave of
// resident blocks), partial sums in
// params.partial ([splits][regions][group][head_dim]), added in split order (deterministic).
cudaError_t outputs_mma(const OutputsParams& params, cudaStream_t stream);

}  // namespace kvq::gpu
