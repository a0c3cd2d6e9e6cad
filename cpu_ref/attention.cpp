#include "cpu_ref/attention.h"

#include <algorithm>
#include <cmath>

namespace kvq::cpu {

void softmax(std::vector<float>& x) {
  if (x.empty()) return;
  // Fixed blocks summed in block order: the same result with any number of threads.
  constexpr int kBlock = 4096;
  const int n = static_cast<int>(x.size());
  const int blocks = (n + kBlock - 1) / kBlock;
  const float m = *std::max_element(x.begin(), x.end());
  std::vector<float> partial(static_cast<std::size_t>(blocks), 0.0f);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int b = 0; b < blocks; ++b) {
    float sum = 0.0f;
    for (int i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) sum += (x[i] = std::exp(x[i] - m));
    partial[b] = sum;
  }
  float sum = 0.0f;
  for (float p : partial) sum += p;
  const float inv = 1.0f / sum;
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

void quantized_attention(const TensorCache& keys, const TensorCache& values, const float* q, AttentionResult& out) {
  const int n = keys.size();
  const int d = keys.head_dim();
  out.scores.resize(static_cast<std::size_t>(n));
  keys.dot_rows(q, out.scores.data());
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
  for (float& s : out.scores) s *= inv_sqrt_d;
  out.probs = out.scores;
  softmax(out.probs);
  out.output.assign(static_cast<std::size_t>(values.head_dim()), 0.0f);
  values.weighted_sum(out.probs.data(), out.output.data());
}

void reference_attention(const float* keys, const float* values, int n, int d, const float* q,
                         ReferenceAttention& out) {
  out.scores.assign(static_cast<std::size_t>(n), 0.0);
  const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
  for (int t = 0; t < n; ++t) {
    double acc = 0.0;
    for (int c = 0; c < d; ++c) acc += static_cast<double>(q[c]) * keys[static_cast<std::size_t>(t) * d + c];
    out.scores[t] = acc * inv_sqrt_d;
  }
  const double m = n ? *std::max_element(out.scores.begin(), out.scores.end()) : 0.0;
  out.probs.resize(static_cast<std::size_t>(n));
  double sum = 0.0;
  for (int t = 0; t < n; ++t) sum += (out.probs[t] = std::exp(out.scores[t] - m));
  for (double& p : out.probs) p /= sum;
  out.output.assign(static_cast<std::size_t>(d), 0.0);
  for (int t = 0; t < n; ++t)
    for (int c = 0; c < d; ++c) out.output[c] += out.probs[t] * values[static_cast<std::size_t>(t) * d + c];
}

}  // namespace kvq::cpu
