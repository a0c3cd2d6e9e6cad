#pragma once
// Decode attention over two streaming caches (gpu::TensorCache), as cpu::quantized_attention over
// cpu::TensorCache: softmax(scale q . K^T) V over every token the caches hold.
// The two caches may hold different numbers of quantized tokens (InnerQ flushes keys one token at a
// time and values 32 at a time; KIVI the other way round), and key normalization folds f into q for the
// quantized keys only. So each call:
//  - runs attention_inner (channel-axis keys, token-axis values) or attention_outer (token-axis keys,
//    channel-axis values) over the quantized tokens both caches hold, rounded down to whole groups of
//    the token-axis tensor, with q f as their query;
//  - gives it every other token (the sink, the quantized tokens only one cache holds, the recent
//    window) as its fp16 windows, with q as their query. They are assembled in the workspace: window
//    rows copied, quantized rows dequantized (keys with f taken back out) and rounded to fp16, the
//    windows' precision. At most one flush plus one token-axis group of tokens is so rounded.
#include <cstddef>

#include <cuda_runtime.h>

#include "gpu/attention.h"
#include "gpu/tensor_cache.h"

namespace kvq::gpu {

struct CacheAttentionParams {
  // queries: [regions][group][head_dim] fp32, device, as the model gives them (no key normalization).
  const float* queries = nullptr;
  int group = 1;       // query heads per kv head (1..8)
  float scale = 1.0f;  // softmax scale, usually 1/sqrt(head_dim)
  // outputs: [regions][group][head_dim] fp32, device.
  float* outputs = nullptr;
  // quantized_attention_workspace(keys, values, group) bytes of device memory, 256-byte aligned.
  void* workspace = nullptr;
  AttentionRoute route = AttentionRoute::automatic;
};

// Bytes of workspace for any state of these caches up to their capacity (0 when they do not go together).
std::size_t quantized_attention_workspace(const TensorCache& keys, const TensorCache& values, int group);

// cudaErrorInvalidValue when the caches do not go together (regions, head_dim, size and sink equal;
// one of the two layouts above; shapes attention_inner or attention_outer take) or a pointer is missing;
// otherwise the first CUDA error.
cudaError_t quantized_attention(const TensorCache& keys, const TensorCache& values, const CacheAttentionParams& params, cudaStream_t stream = nullptr);

}  // namespace kvq::gpu
