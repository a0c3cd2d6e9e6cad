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
  auto needs = [](const TensorSpec& t, const float* scale, const char* key) {
    if (t.token_scale == TokenScale::omni && scale == nullptr) fail("internal: {}=omni without omni scales", key);
    return scale;
  };
  const float* ks = needs(spec.k, data.key_scale, "k.token_scale");
  const float* vs = needs(spec.v, data.value_scale, "v.token_scale");
  TensorCache keys = make_cache(spec, TensorKind::key, d);
  TensorCache values = make_cache(spec, TensorKind::value, d);
  keys.prefill(data.keys, window.prefill, ks);
  values.prefill(data.values, window.prefill, vs);

  HeadEval out;
  AttentionResult quantized;
  ReferenceAttention reference;
  for (int t = window.prefill; t < T; ++t) {
    keys.append(data.keys + static_cast<std::size_t>(t) * d, ks ? ks[t] : 0.0f);
    values.append(data.values + static_cast<std::size_t>(t) * d, vs ? vs[t] : 0.0f);
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
  auto mean_imbalance = [&](const float* rows) {
    const std::vector<double> r = token_norm_imbalance(rows, T, d, 32);
    double sum = 0;
    for (double x : r) sum += x;
    return r.empty() ? 0.0 : sum / static_cast<double>(r.size());
  };
  const std::vector<float> seen = scale_and_rotate(spec.k, keys.rotator(), data.keys, T, d, ks, nullptr);
  out.key_imbalance_in = mean_imbalance(data.keys);
  out.key_imbalance = mean_imbalance(seen.data());
  out.key_outlier_in = channel_outlier_ratio(channel_max_abs(data.keys, T, d));
  out.key_outlier = channel_outlier_ratio(channel_max_abs(seen.data(), T, d));

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
