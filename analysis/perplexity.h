#pragma once
// End-to-end perplexity with a quantized KV cache in the loop: the model runs
// teacher-forced over T tokens; positions before P attend exactly (prefill), then
// the cache is prefilled with P tokens as the spec says and every later position
// attends over the quantized cache after its own token is appended (windows and
// flushes as specified). Computed layer by layer, which equals token-by-token
// decoding because a position's layer-l attention needs only layer-l keys and values
// of positions up to it. docs/METRICS.md defines the reported numbers.
#include <string>
#include <vector>

#include "core/spec.h"
#include "data/llama.h"

namespace kvq::analysis {

struct PplOptions {
  int prefill = -1;  // P; -1: half of the tokens
};

struct PplResult {
  std::string preset;       // label(spec)
  CacheSpec spec;
  int scored = 0;           // predictions scored: positions P .. T-2
  double nll = 0;           // mean negative log-likelihood of the next token
  double ppl = 0;           // exp(nll)
  double ppl_delta = 0;     // ppl - ppl of the exact (fp32) cache
  double top1 = 0;          // fraction of positions whose argmax matches the exact cache's
  double kl = 0;            // mean KL(p_exact || p_quantized) of the next-token distributions
};

// Evaluates each spec against the exact cache on `tokens`; the first result is the exact cache itself
// (preset "none"). Progress goes to stderr when `progress` is set.
std::vector<PplResult> perplexity(const data::LlamaModel& model, const std::vector<int>& tokens,
                                  const std::vector<CacheSpec>& specs, const PplOptions& options, bool progress);

// Hidden states of the model run with the spec's cache in the loop (the engine above).
data::Matrix forward_with_cache(const data::LlamaModel& model, const std::vector<int>& tokens, const CacheSpec& spec,
                                int prefill);

}  // namespace kvq::analysis
