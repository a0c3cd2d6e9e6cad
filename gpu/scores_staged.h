#pragma once
// Staged tensor-core scores over channel-axis keys (internal to gpu/; scores_inner picks it for GQA > 1).
#include <cuda_runtime.h>

#include "gpu/gemv.h"

namespace kvq::gpu {

// Whether scores_staged handles the shape: bits 2/3/4/8, head_dim 64/128, any GQA group up to 8,
// group_size >= 16 (>= 32 for 3 bits, whose k-steps mix a chunk's halves).
bool scores_staged_supported(const RegionShape& shape, int group);
cudaError_t scores_staged(const ScoresParams& params, cudaStream_t stream);

}  // namespace kvq::gpu
