#pragma once
// Tensor-core outputs over token-axis values (internal to gpu/; outputs_inner picks it).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "gpu/attention_parts.h"
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
// fp16 windows (sink + recent tokens) for outputs_softmax_mma to take: keys and values
// [regions][tokens][head_dim], queries [regions][head_dim] fp32; tokens 0: none.
struct SoftmaxWindows {
  const __half* keys = nullptr;
  const __half* values = nullptr;
  const float* queries = nullptr;
  int tokens = 0;
};

// The values half of the unfused attention (gpu/attention.cu), for groups of 1..8 where
// outputs_mma_supported: params.probs holds the raw scores q . k^ ([regions][group][tokens] fp32), and
// each of at most params.splits runs turns them into e^(scale s - m) against each head's running max m
// (an online softmax, times the token scale where given) and writes its part (unnormalized output, m
// and the sum of the exponentials) into parts [0, used) of `parts`, for the merge. One query head per
// kv head also takes the windows, each part its share of them (windows_taken); GQA groups leave them to
// the caller. params.outputs and params.partial are not used.
cudaError_t outputs_softmax_mma(const OutputsParams& params, float scale, const attention_detail::Parts& parts, const SoftmaxWindows& windows, int& used,
                                bool& windows_taken, cudaStream_t stream);

}  // namespace kvq::gpu
