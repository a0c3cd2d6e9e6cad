#include "analysis/perplexity.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "cpu_ref/attention.h"
#include "cpu_ref/tensor_cache.h"

namespace kvq::analysis {

data::Matrix forward_with_cache(const data::LlamaModel& model, const std::vector<int>& tokens, const CacheSpec& spec,
                                int prefill) {
  const auto& cfg = model.config();
  const int T = static_cast<int>(tokens.size()), d = cfg.head_dim, group = cfg.heads / cfg.kv_heads;
  spec.validate(d);
  auto attention = [&](int, const data::Matrix& q, const data::Matrix& k, const data::Matrix& v, data::Matrix& out) {
    out.resize(T, q.cols());
    // Prefill positions attend exactly, over the unquantized keys and values.
#pragma omp parallel for schedule(dynamic) collapse(2)
    for (int h = 0; h < cfg.heads; ++h)
      for (int t = 0; t < prefill; ++t) model.attend(q.row(t).data() + h * d, k, v, h / group, t + 1, out.row(t).data() + h * d);
    // Omni-token scales (OScaR) span every kv head of a token.
    std::vector<float> key_scale, value_scale;
    auto omni = [&](const data::Matrix& m, std::vector<float>& out) {
      std::vector<std::vector<float>> heads(static_cast<std::size_t>(cfg.kv_heads));
      std::vector<const float*> rows;
      for (int h = 0; h < cfg.kv_heads; ++h) {
        heads[h].resize(static_cast<std::size_t>(T) * d);
        for (int t = 0; t < T; ++t)
          for (int c = 0; c < d; ++c) heads[h][static_cast<std::size_t>(t) * d + c] = m(t, h * d + c);
        rows.push_back(heads[h].data());
      }
      out = cpu::omni_token_scale(rows, T, d);
    };
    if (spec.k.token_scale == TokenScale::omni) omni(k, key_scale);
    if (spec.v.token_scale == TokenScale::omni) omni(v, value_scale);
    const float* ks = key_scale.empty() ? nullptr : key_scale.data();
    const float* vs = value_scale.empty() ? nullptr : value_scale.data();
    // Decode positions: append the token, then attend over the quantized cache.
#pragma omp parallel for schedule(dynamic)
    for (int kvh = 0; kvh < cfg.kv_heads; ++kvh) {
      std::vector<float> k_rows(static_cast<std::size_t>(T) * d), v_rows(k_rows.size());
      for (int t = 0; t < T; ++t)
        for (int c = 0; c < d; ++c) {
          k_rows[static_cast<std::size_t>(t) * d + c] = k(t, kvh * d + c);
          v_rows[static_cast<std::size_t>(t) * d + c] = v(t, kvh * d + c);
        }
      cpu::TensorCache keys = cpu::make_cache(spec, TensorKind::key, d);
      cpu::TensorCache values = cpu::make_cache(spec, TensorKind::value, d);
      keys.prefill(k_rows.data(), prefill, ks);
      values.prefill(v_rows.data(), prefill, vs);
      cpu::AttentionResult result;
      for (int t = prefill; t < T; ++t) {
        keys.append(&k_rows[static_cast<std::size_t>(t) * d], ks ? ks[t] : 0.0f);
        values.append(&v_rows[static_cast<std::size_t>(t) * d], vs ? vs[t] : 0.0f);
        for (int g = 0; g < group; ++g) {
          const int h = kvh * group + g;
          cpu::quantized_attention(keys, values, q.row(t).data() + h * d, result);
          std::copy(result.output.begin(), result.output.end(), out.row(t).data() + h * d);
        }
      }
    }
  };
  return model.forward(tokens, attention);
}

namespace {
// Log-softmax of one logits row, in double.
std::vector<double> log_softmax(const float* logits, int n) {
  double m = logits[0];
  for (int i = 1; i < n; ++i) m = std::max(m, static_cast<double>(logits[i]));
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(logits[i] - m);
  const double log_sum = m + std::log(sum);
  std::vector<double> out(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) out[i] = logits[i] - log_sum;
  return out;
}
}  // namespace

std::vector<PplResult> perplexity(const data::LlamaModel& model, const std::vector<int>& tokens,
                                  const std::vector<CacheSpec>& specs, const PplOptions& options, bool progress) {
  const int T = static_cast<int>(tokens.size());
  const int P = options.prefill < 0 ? T / 2 : options.prefill;
  if (T < 2) fail("ppl: need at least 2 tokens, got {}", T);
  if (P < 1 || P > T - 1) fail("prefill: got {}, expected 1..{} for {} tokens", P, T - 1, T);
  const int V = model.config().vocab;
  const int scored = T - 1 - P;  // predictions made at positions P .. T-2
  if (scored < 1) fail("prefill: {} leaves no decoded position to score among {} tokens", P, T);

  std::vector<CacheSpec> all = {preset("none")};
  all.insert(all.end(), specs.begin(), specs.end());
  std::vector<PplResult> results;
  std::vector<std::vector<double>> reference;  // exact log-probs, scored positions
  std::vector<int> reference_top1;
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t s = 0; s < all.size(); ++s) {
    const data::Matrix hidden = forward_with_cache(model, tokens, all[s], P);
    PplResult r;
    r.spec = all[s];
    r.preset = label(all[s]);
    r.scored = scored;
    double nll = 0, kl = 0;
    int agree = 0;
    constexpr int kChunk = 64;
    for (int b = P; b < T - 1; b += kChunk) {
      const int e = std::min(T - 1, b + kChunk);
      const data::Matrix logits = model.logits(hidden, b, e);
      for (int i = 0; i < e - b; ++i) {
        const std::vector<double> lp = log_softmax(logits.row(i).data(), V);
        const int pos = b + i - P;
        nll -= lp[static_cast<std::size_t>(tokens[b + i + 1])];
        const int top = static_cast<int>(std::max_element(lp.begin(), lp.end()) - lp.begin());
        if (s == 0) {
          reference.push_back(lp);
          reference_top1.push_back(top);
          ++agree;
          continue;
        }
        agree += top == reference_top1[pos];
        const auto& ref = reference[pos];
        double k = 0;
        for (int j = 0; j < V; ++j) k += std::exp(ref[j]) * (ref[j] - lp[j]);
        kl += std::max(k, 0.0);
      }
    }
    r.nll = nll / scored;
    r.ppl = std::exp(r.nll);
    r.top1 = static_cast<double>(agree) / scored;
    r.kl = kl / scored;
    r.ppl_delta = results.empty() ? 0.0 : r.ppl - results.front().ppl;
    results.push_back(r);
    if (progress) {
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::fprintf(stderr, "\rppl: %zu/%zu caches  %.0fs elapsed  ETA %.0fs   ", s + 1, all.size(), elapsed,
                   elapsed / static_cast<double>(s + 1) * static_cast<double>(all.size() - s - 1));
      if (s + 1 == all.size()) std::fprintf(stderr, "\n");
    }
  }
  return results;
}

}  // namespace kvq::analysis
