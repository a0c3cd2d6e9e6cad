#pragma once
// Tensor-core scores over channel-axis keys, lane-owned chunks (internal to gpu/; scores_inner picks
// it for one query head per kv head).
#include <cuda_runtime.h>

#include "gpu/gemv.h"

namespace kvq::gpu {

// Whether scores_mma handles the shape: bits 2/3/4/8, head_dim 64/128, GQA group 1, group_size
// 32, 64 or 128 (a lane's chunk, half a chunk at head_dim 64, must lie in one group).
bool scores_mma_supported(const RegionShape& shape, int group);
cudaError_t scores_mma(const ScoresParams& params, cudaStream_t stream);

}  // namespace kvq::gpu
