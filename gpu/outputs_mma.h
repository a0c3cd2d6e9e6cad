#pragma once
// Tensor-core outputs over token-axis values (internal to gpu/; outputs_inner picks it).
#include <cuda_runtime.h>

#include "gpu/gemv.h"

namespace kvq::gpu {

// Whether outputs_mma handles the shape: bits 2/3/4/8, head_dim 64/128, GQA group up to 8, token-axis
// groups of 32, 64 or 128 tokens (16 too, except for 3 bits, whose bit-2 plane spans 32 tokens).
bool outputs_mma_supported(const RegionShape& shape, int group);
// Splits the sequence into at most params.splits runs of whole 128-token stages, partial sums in
// params.partial ([splits][regions][group][head_dim]), added in split order (deterministic).
cudaError_t outputs_mma(const OutputsParams& params, cudaStream_t stream);

}  // namespace kvq::gpu
