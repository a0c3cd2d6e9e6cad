#pragma once
// Decode attention of one query vector over a (layer, kv head) cache:
//   scores s = q . K^T / sqrt(d), p = softmax(s) in fp32, o = p . V.
#include <vector>

#include "cpu_ref/tensor_cache.h"

namespace kvq::cpu {

struct AttentionResult {
  std::vector<float> scores;  // logits, already divided by sqrt(d)
  std::vector<float> probs;
  std::vector<float> output;  // head_dim
};

// Attention over the quantized caches, computed from the packed codes.
void quantized_attention(const TensorCache& keys, const TensorCache& values, const float* q, AttentionResult& out);

struct ReferenceAttention {
  std::vector<double> scores;
  std::vector<double> probs;
  std::vector<double> output;
};

// Exact attention in double precision over the first n rows of K and V (row-major, n x d).
void reference_attention(const float* keys, const float* values, int n, int d, const float* q,
                         ReferenceAttention& out);

// In-place softmax in fp32 (max-subtracted; summed in fixed 4096-element blocks, then in block order).
void softmax(std::vector<float>& x);

}  // namespace kvq::cpu
