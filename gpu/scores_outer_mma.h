#pragma once
// Tensor-core scores over token-axis keys, the outer layout (internal to gpu/; scores_outer picks it).
#include <cuda_runtime.h>

#include "gpu/gemv.h"

namespace kvq::gpu {

// Whether scores_outer_mma handles the shape: what scores_outer_supported takes, with bits 2/4/8, fp16
// metadata, GQA group up to 4 (hi and lo columns of every head in one mma) and codes on 16 bytes (the
// warps copy whole tiles with cp.async).
bool scores_outer_mma_supported(const DeviceRegions& keys, int group);
// One wave of resident blocks over the regions' 32-token tiles; each tile's scores are written once.
cudaError_t scores_outer_mma(const ScoresParams& params, cudaStream_t stream);

}  // namespace kvq::gpu
