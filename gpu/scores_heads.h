#pragma once
// Tensor-core scores over channel-axis keys for GQA groups, heads sharing each mma (internal to gpu/;
// scores_inner picks it for GQA groups > 1).
#include <cuda_runtime.h>

#include "gpu/gemv.h"

namespace kvq::gpu {

// Whether scores_heads handles the shape: bits 2/3/4/8, head_dim 64/128, GQA groups 2..8, channel
// groups of 32, 64 or 128 (a 32-channel chunk lies in one group), codes on 16 bytes.
bool scores_heads_supported(const DeviceRegions& keys, int group);
cudaError_t scores_heads(const ScoresParams& params, cudaStream_t stream);

}  // namespace kvq::gpu
