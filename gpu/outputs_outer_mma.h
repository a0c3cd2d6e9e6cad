#pragma once
// Tensor-core outputs over channel-axis values, the outer layout (internal to gpu/; outputs_outer
// picks it).
#include <cuda_runtime.h>

#include "gpu/gemv.h"

namespace kvq::gpu {

// Whether outputs_outer_mma handles the shape: bits 2/4/8, head_dim 64/128, channel-axis groups of
// 16..128 channels, fp16 metadata, GQA group up to 4 (hi and lo columns of every head in one mma),
// codes on 16 bytes (the warps copy whole rows with cp.async).
bool outputs_outer_mma_supported(const DeviceRegions& values, int group);
// Splits the sequence into at most params.splits runs of whole 32-token stretches (at most one wave of
// resident blocks), partial sums in params.partial ([splits][regions][group][head_dim]), added in split
// order (deterministic).
cudaError_t outputs_outer_mma(const OutputsParams& params, cudaStream_t stream);

}  // namespace kvq::gpu
