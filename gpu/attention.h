#pragma once
// Fused decode attention, FlashDecoding style: the sequence is split across blocks, each block runs
// scores, an online softmax and the weighted sum of values over its part in one pass over the cache,
// and a second kernel merges the parts (max-rescaled sums, in part order: deterministic).
//   attention_inner: over an InnerQ cache, channel-axis keys and token-axis values, plus fp16 windows
//                    (sink + recent). One query head per kv head with fp16 metadata: warps streaming
//                    their own stretches on the GEMVs' lane-owned decode (gpu/attention_lane.cuh);
//                    otherwise the tensor-core stages of gpu/inner_stage.cuh (gpu/attention_inner.cuh);
//                    given scores_scratch, for GQA groups and long sequences (AttentionRoute), the
//                    keys' GEMV, then the values' kernel running the online softmax over its scores
//                    (gpu/outputs_mma.h) instead;
//   attention_outer: over an outer-layout cache (KIVI's: token-axis key groups, channel-axis value
//                    groups), unfused: the outer keys' GEMV into scores_scratch, each row's softmax max
//                    and sum, the outer values' GEMV weighing the scores as e^(scale s - m) itself, as
//                    one part; the fp16 windows another, then the merge;
//   attention_fp16:  the fp16 baseline over dense fp16 keys and values.
// softmax_rows (with scores_fp16/outputs_fp16 or cuBLAS) is the unfused path for comparison.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "gpu/region.h"

namespace kvq::gpu {

// How attention_inner runs where the caller gives scores_scratch (without it: fused).
enum class AttentionRoute {
  // Unfused for GQA groups, and for one query head per kv head from kUnfusedOneHeadTokens quantized
  // tokens on (measured faster there, docs/PERF.md); fused otherwise.
  automatic,
  fused,    // the fused kernel
  unfused,  // the keys' GEMV into scores_scratch, then the values' kernel with the softmax
};
// One head's unfused route beat the fused kernel at 32768 tokens and lost at 16384 (H100, paper shape).
inline constexpr int kUnfusedOneHeadTokens = 24576;

struct AttentionParams {
  // Quantized tokens, the same `regions` regions (batch x kv heads) of the same token count: for
  // attention_inner keys with channel-axis groups and values with token-axis groups (value groups
  // whole), for attention_outer the other way round (key groups whole).
  DeviceRegions keys, values;
  // Optional token scales (rotation family): [regions][keys.shape.tokens] fp32 each; null: none.
  const float* key_token_scale = nullptr;
  const float* value_token_scale = nullptr;
  // Optional fp16 windows (full-precision sink and recent tokens): [regions][window][head_dim], device.
  // Attention does not depend on token order, so they are simply more tokens.
  const __half* window_keys = nullptr;
  const __half* window_values = nullptr;
  int window = 0;
  // queries: [regions][group][head_dim] fp32 (key normalization folded in, rotated if the keys are).
  const float* queries = nullptr;
  // Optional: the windows' queries, [regions][group][head_dim] fp32; null: queries. Windows that hold
  // keys as given, beside quantized keys divided by a key-normalization factor f, take q where the
  // quantized keys take q f (gpu/quantized_attention.h).
  const float* window_queries = nullptr;
  int group = 1;       // query heads per kv head (1..8)
  float scale = 1.0f;  // softmax scale, usually 1/sqrt(head_dim)
  // outputs: [regions][group][head_dim] fp32 = softmax(scale * q.K^) V^ (rotated values: rotate back).
  float* outputs = nullptr;
  // Scratch of attention_scratch_floats(regions, group, head_dim, splits) floats, device.
  float* scratch = nullptr;
  int splits = 1;  // at most this many sequence parts over the quantized tokens (see attention_splits)
  // Optional for attention_inner: [regions][group][keys.shape.tokens] fp32, device. Given it, values the
  // tensor-core outputs take (outputs_mma_supported) may run unfused (`route`): scores_inner into this
  // array, then the values' kernel with an online softmax over it (up to `splits` sequence splits; for
  // one head it also takes the windows); null: fused. attention_outer needs it whenever there are
  // quantized tokens (its scores).
  float* scores_scratch = nullptr;
  AttentionRoute route = AttentionRoute::automatic;
};

struct Fp16AttentionParams {
  // keys, values: [regions][tokens][head_dim] fp16, device.
  const __half* keys = nullptr;
  const __half* values = nullptr;
  int regions = 1, tokens = 0, head_dim = 128, group = 1;
  const float* queries = nullptr;  // [regions][group][head_dim] fp32
  float scale = 1.0f;
  float* outputs = nullptr;  // [regions][group][head_dim] fp32
  float* scratch = nullptr;  // attention_scratch_floats(regions, group, head_dim, splits)
  int splits = 1;
};

// Key/value bit widths the fused kernel is built for: InnerQ's 3/2 and 3/3, and 2/2, 4/4 (other
// pairs, and 8 bits, use the separate GEMVs: each pair is 16 kernels to compile).
bool attention_inner_bits(int key_bits, int value_bits);
// Sequence parts that fill the device about once for `regions` regions of `tokens` tokens.
int attention_splits(int regions, int tokens, int multiprocessors);
// Floats of scratch for up to `splits` parts (+1 for the windows).
long long attention_scratch_floats(int regions, int group, int head_dim, int splits);

// Each returns the first CUDA error, or cudaErrorInvalidValue for an unsupported shape (attention_inner:
// as scores_inner/outputs_inner, on the tensor-core kernels; attention_outer: as scores_outer and
// outputs_outer; keys and values of equal token counts).
cudaError_t attention_inner(const AttentionParams& params, cudaStream_t stream = nullptr);
cudaError_t attention_outer(const AttentionParams& params, cudaStream_t stream = nullptr);
cudaError_t attention_fp16(const Fp16AttentionParams& params, cudaStream_t stream = nullptr);

// probs = softmax(scale * scores) row by row: scores [rows][tokens] fp32; probs fp32 and/or fp16
// (either may be null), for the unfused baselines (our GEMVs, or cuBLAS with fp16 probabilities).
cudaError_t softmax_rows(const float* scores, int rows, int tokens, float scale, float* probs, __half* probs_fp16,
                         cudaStream_t stream = nullptr);

}  // namespace kvq::gpu
