#pragma once
// Evaluation of one cache spec on one (layer, kv head): prefill P tokens, decode
// the rest one token at a time, and at each evaluated position compare attention
// of every query head of the group over the quantized cache with exact attention
// (double precision) over the original tensors at the same step.
#include <vector>

#include "core/metrics.h"
#include "core/spec.h"

namespace kvq::cpu {

struct HeadData {
  int seq_len = 0;
  int head_dim = 0;
  const float* keys = nullptr;    // seq_len x head_dim
  const float* values = nullptr;  // seq_len x head_dim
  std::vector<const float*> queries;  // one per query head of the group (may be empty)
  // Omni-token scales over all kv heads of the layer (seq_len each), for specs with
  // token_scale=omni; null otherwise.
  const float* key_scale = nullptr;
  const float* value_scale = nullptr;
};

struct EvalWindow {
  int prefill = 0;      // tokens prefilled before decoding
  int first_eval = 0;   // first decoded position whose query is evaluated (>= prefill)
};

struct HeadEval {
  ReconstructionMetrics keys, values;  // at the final step, windows included
  double key_bits = 0, value_bits = 0;  // allocated bits per element at the final step
  int positions = 0;                    // evaluated query positions (x query heads)
  // Each attention metric over positions and query heads.
  Stat score_abs, score_rel, kl, tv, top8, top32, out_rel;
  Stat tv_bound;        // the certified bound on TV from the worst score error
  Stat bound_ratio;     // tv_bound / tv, over queries whose TV is not zero: how loose the bound is
  // Keys over the whole sequence, as given (_in) and as the key quantizer sees them (after the
  // token scale and rotation): mean token-norm imbalance over 32-token groups, channel outlier ratio.
  double key_imbalance_in = 0, key_imbalance = 0;
  double key_outlier_in = 0, key_outlier = 0;
};

HeadEval evaluate_head(const CacheSpec& spec, const HeadData& data, const EvalWindow& window);

}  // namespace kvq::cpu
