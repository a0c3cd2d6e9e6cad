#pragma once
// Synthetic KV tensors with the structure that makes KV quantization hard
// (docs/SYNTH.md): outlier key channels, RoPE on keys and queries, a low-norm
// attention-sink key at position 0 that still draws most attention, per-token
// norm variation, near-Gaussian values, GQA. Deterministic for a given seed,
// whatever the number of threads.
#include <cstdint>
#include <string>
#include <vector>

#include "data/kv_dump.h"

namespace kvq::data {

struct SynthConfig {
  int num_layers = 4;
  int num_heads = 8;
  int num_kv_heads = 2;
  int head_dim = 64;
  int seq_len = 1024;
  std::uint64_t seed = 0;
  double rope_theta = 10000.0;
  bool rope = true;
  int outlier_channels = 4;         // per kv head; 0 disables
  double outlier_min = 10.0;        // outlier channel magnitude relative to a typical channel
  double outlier_max = 100.0;
  bool sink = true;                 // low-norm key at position 0 aligned with the queries
  double token_norm_sigma = 0.3;    // log-normal spread of per-token key norms; 0 disables
  bool queries = true;
};

// One (layer, kv head): keys and pre-RoPE keys (T x d), values (T x d), and the
// queries of the kv head's group of query heads (group x T x d).
struct SynthSlab {
  std::vector<float> keys, keys_pre_rope, values;
  std::vector<std::vector<float>> queries;
  std::vector<int> outlier_channels;  // pre-RoPE channels chosen as outliers, ascending
};

SynthSlab synth_slab(const SynthConfig& config, int layer, int kv_head);

// Writes a whole dump (with provenance attributes) atomically.
void write_synthetic_dump(const SynthConfig& config, const std::string& path, const std::string& command);

// Applies RoPE in place to rows (T x d) at positions 0..T-1, pairing channel i with
// i + d/2 at frequency theta^(-2i/d) (the Hugging Face Llama convention).
void apply_rope(std::vector<float>& rows, int seq_len, int head_dim, double theta);

}  // namespace kvq::data
