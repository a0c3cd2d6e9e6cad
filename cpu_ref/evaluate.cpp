#include "cpu_ref/evaluate.h"

#include "core/error.h"
#include "cpu_ref/attention.h"
#include "cpu_ref/tensor_cache.h"

namespace kvq::cpu {

HeadEval evaluate_head(const CacheSpec& spec, const HeadData& data, const EvalWindow& window) {
  const int T = data.seq_len, d = data.head_dim;
  if (window.prefill < 0 || window.prefill > T || window.first_eval < window.prefill) {
    fail("prefill: got {}, expected 0..{} tokens", window.prefill, T);
  }
  TensorCache keys(spec.k, d, spec.sink, spec.recent, spec.key_norm);
  TensorCache values(spec.v, d, spec.sink, spec.recent, false);
  keys.prefill(data.keys, window.prefill);
  values.prefill(data.values, window.prefill);

  HeadEval out;
  AttentionResult quantized;
  ReferenceAttention reference;
  for (int t = window.prefill; t < T; ++t) {
    keys.append(data.keys + static_cast<std::size_t>(t) * d);
    values.append(data.values + static_cast<std::size_t>(t) * d);
    if (t < window.first_eval) continue;
    for (const float* q_head : data.queries) {
      const float* q = q_head + static_cast<std::size_t>(t) * d;
      quantized_attention(keys, values, q, quantized);
      reference_attention(data.keys, data.values, t + 1, d, q, reference);
      const AttentionMetrics m = attention_metrics(reference.scores, reference.probs, reference.output,
                                                   quantized.scores, quantized.probs, quantized.output);
      out.score_abs.add(m.score_abs);
      out.score_rel.add(m.score_rel);
      out.kl.add(m.kl);
      out.tv.add(m.tv);
      out.top8.add(m.top8);
      out.top32.add(m.top32);
      out.out_rel.add(m.out_rel);
      out.tv_bound.add(m.tv_bound);
      if (m.tv > 0) out.bound_ratio.add(m.tv_bound / m.tv);
      ++out.positions;
    }
  }
  std::vector<float> dequantized(static_cast<std::size_t>(T) * d);
  keys.dequantize(dequantized.data());
  out.keys = reconstruction_metrics(data.keys, dequantized.data(), dequantized.size());
  values.dequantize(dequantized.data());
  out.values = reconstruction_metrics(data.values, dequantized.data(), dequantized.size());
  out.key_bits = keys.bits_per_element();
  out.value_bits = values.bits_per_element();
  return out;
}

}  // namespace kvq::cpu
