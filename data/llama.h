#pragma once
// A Llama-architecture forward pass in fp32 with Eigen and OpenMP, weights from a
// GGUF file (dequantized once). GQA, RMSNorm, SwiGLU, tied or separate output.
//
// Channel order: llama.cpp stores the q/k projection rows permuted so that RoPE
// rotates adjacent pairs (2i, 2i+1). kvq undoes that permutation per head (GGUF
// channel 2i -> i, 2i+1 -> i + d/2) and applies RoPE in the Hugging Face layout
// (pairs i, i + d/2, frequency theta^(-2i/d)): the same numbers llama.cpp computes,
// in the channel order transformers (and data/dump_hf.py) produce, so dumps from
// either source group channels the same way.
#include <functional>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "data/gguf.h"

namespace kvq::data {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Where scripts/fetch_model.sh puts SmolLM2-135M-Instruct.Q4_1.gguf: $KVQ_CACHE, default ~/.cache/kvq.
std::string default_model_path();

struct LlamaConfig {
  int layers = 0, heads = 0, kv_heads = 0, head_dim = 0, hidden = 0, ffn = 0, vocab = 0;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
};

class LlamaModel {
 public:
  explicit LlamaModel(const GgufFile& gguf);
  const LlamaConfig& config() const { return config_; }

  // Attention of one layer for all positions: q [T x heads*d], k and v [T x kv_heads*d]
  // (post-RoPE, HF channel order per head); writes out [T x heads*d].
  using Attention = std::function<void(int layer, const Matrix& q, const Matrix& k, const Matrix& v, Matrix& out)>;
  // Sees each layer's q (post-RoPE), keys before and after RoPE, and values.
  using Observer =
      std::function<void(int layer, const Matrix& q, const Matrix& k_pre_rope, const Matrix& k, const Matrix& v)>;

  // Runs tokens at positions 0..T-1 layer by layer; returns the final normed hidden states [T x hidden].
  Matrix forward(const std::vector<int>& tokens, const Attention& attention, const Observer& observe = nullptr) const;
  // Logits [rows x vocab] of hidden-state rows [begin, end).
  Matrix logits(const Matrix& hidden, int begin, int end) const;

  // Exact causal attention in fp32 (the default): for position t, query head h attends
  // to positions 0..t of kv head h / (heads / kv_heads).
  void causal_attention(const Matrix& q, const Matrix& k, const Matrix& v, Matrix& out) const;

  // One-token decode with an fp32 KV cache (for generation and the prefill/decode check).
  struct KvCache {
    std::vector<Matrix> k, v;  // per layer [positions x kv_heads*d]
    int length = 0;
  };
  Eigen::VectorXf decode(int token, KvCache& cache) const;

  // Softmax attention of one query head (q: head_dim) over rows [0, n) of kv head `kv_head`,
  // in fp32: scores summed over channels in order, exp(s - max) summed in order, times 1/sum.
  void attend(const float* q, const Matrix& k, const Matrix& v, int kv_head, int n, float* out) const;

 private:
  struct Layer {
    Eigen::VectorXf attn_norm, ffn_norm;
    Matrix wq, wk, wv, wo, w_gate, w_up, w_down;  // [out x in]
  };
  // One transformer block over rows x at positions first_position..: projections, RoPE, then
  // `attend(q, k_pre_rope, k, v, attn)` fills attn [rows x hidden], then output projection and MLP.
  using BlockAttention =
      std::function<void(const Matrix& q, const Matrix& k_pre_rope, const Matrix& k, const Matrix& v, Matrix& attn)>;
  void block(int layer, Matrix& x, int first_position, const BlockAttention& attend) const;
  void rope(Matrix& x, int heads, int first_position) const;
  void unpermute(Matrix& x, int heads) const;
  Matrix rms_norm(const Matrix& x, const Eigen::VectorXf& weight) const;

  LlamaConfig config_;
  Matrix embedding_;  // [vocab x hidden]
  Matrix output_;     // [vocab x hidden]; empty when tied to the embedding
  Eigen::VectorXf output_norm_;
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;  // theta^(-2i/d)
};

}  // namespace kvq::data
