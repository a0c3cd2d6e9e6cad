#include "core/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace kvq {

ReconstructionMetrics reconstruction_metrics(const float* x, const float* x_hat, std::size_t n) {
  ReconstructionMetrics m;
  double err2 = 0, ref2 = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double e = static_cast<double>(x[i]) - static_cast<double>(x_hat[i]);
    err2 += e * e;
    ref2 += static_cast<double>(x[i]) * x[i];
    m.max_abs = std::max(m.max_abs, std::fabs(e));
  }
  m.mse = n ? err2 / static_cast<double>(n) : 0.0;
  m.rel_fro = ref2 > 0 ? std::sqrt(err2 / ref2) : (err2 > 0 ? std::numeric_limits<double>::infinity() : 0.0);
  m.snr_db = err2 > 0 ? 10.0 * std::log10(ref2 / err2) : std::numeric_limits<double>::infinity();
  return m;
}

namespace {
template <typename T>
std::vector<std::size_t> top_indices(const std::vector<T>& v, std::size_t k) {
  std::vector<std::size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  k = std::min(k, v.size());
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                    [&](std::size_t a, std::size_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}
}  // namespace

double topk_overlap(const std::vector<double>& a, const std::vector<float>& b, std::size_t k) {
  if (a.empty()) return 1.0;
  const auto ia = top_indices(a, k);
  const auto ib = top_indices(b, k);
  std::vector<std::size_t> common;
  std::set_intersection(ia.begin(), ia.end(), ib.begin(), ib.end(), std::back_inserter(common));
  return static_cast<double>(common.size()) / static_cast<double>(ia.size());
}

AttentionMetrics attention_metrics(const std::vector<double>& ref_scores, const std::vector<double>& ref_probs,
                                   const std::vector<double>& ref_output, const std::vector<float>& scores,
                                   const std::vector<float>& probs, const std::vector<float>& output) {
  AttentionMetrics m;
  const std::size_t n = ref_scores.size();
  double abs_sum = 0, diff2 = 0, ref2 = 0;
  for (std::size_t j = 0; j < n; ++j) {
    const double e = ref_scores[j] - scores[j];
    abs_sum += std::fabs(e);
    m.score_max = std::max(m.score_max, std::fabs(e));
    diff2 += e * e;
    ref2 += ref_scores[j] * ref_scores[j];
    const double p = ref_probs[j];
    const double q = probs[j];
    m.tv += 0.5 * std::fabs(p - q);
    // p log(p/q): a q that underflowed to 0 where p > 0 is floored at the smallest normal float,
    // so a collapsed probability reads as a large, finite divergence.
    if (p > 0) m.kl += p * std::log(p / std::max(q, static_cast<double>(std::numeric_limits<float>::min())));
  }
  m.kl = std::max(m.kl, 0.0);  // rounding can make an exact match read as -1e-17
  m.score_abs = n ? abs_sum / static_cast<double>(n) : 0.0;
  m.tv_bound = 0.5 * std::expm1(2.0 * m.score_max);
  m.score_rel = ref2 > 0 ? std::sqrt(diff2 / ref2) : 0.0;
  m.top8 = topk_overlap(ref_probs, probs, 8);
  m.top32 = topk_overlap(ref_probs, probs, 32);
  double od2 = 0, or2 = 0;
  for (std::size_t c = 0; c < ref_output.size(); ++c) {
    const double e = ref_output[c] - output[c];
    od2 += e * e;
    or2 += ref_output[c] * ref_output[c];
  }
  m.out_rel = or2 > 0 ? std::sqrt(od2 / or2) : 0.0;
  return m;
}

std::vector<double> token_norm_imbalance(const float* rows, int tokens, int head_dim, int group) {
  std::vector<double> ratios;
  for (int t0 = 0; t0 < tokens; t0 += group) {
    const int t1 = std::min(tokens, t0 + group);
    if (t1 - t0 < 2) break;
    double lo = std::numeric_limits<double>::infinity(), hi = 0;
    for (int t = t0; t < t1; ++t) {
      double n2 = 0;
      for (int c = 0; c < head_dim; ++c) {
        const double x = rows[static_cast<std::size_t>(t) * head_dim + c];
        n2 += x * x;
      }
      lo = std::min(lo, std::sqrt(n2));
      hi = std::max(hi, std::sqrt(n2));
    }
    ratios.push_back(lo > 0 ? hi / lo : std::numeric_limits<double>::infinity());
  }
  return ratios;
}

std::vector<double> channel_max_abs(const float* rows, int tokens, int head_dim) {
  std::vector<double> maxima(static_cast<std::size_t>(head_dim), 0.0);
  for (int t = 0; t < tokens; ++t)
    for (int c = 0; c < head_dim; ++c)
      maxima[c] = std::max(maxima[c], std::fabs(static_cast<double>(rows[static_cast<std::size_t>(t) * head_dim + c])));
  return maxima;
}

double channel_outlier_ratio(std::vector<double> channel_max) {
  if (channel_max.empty()) return 0.0;
  const double top = *std::max_element(channel_max.begin(), channel_max.end());
  const auto mid = channel_max.begin() + static_cast<std::ptrdiff_t>(channel_max.size() / 2);
  std::nth_element(channel_max.begin(), mid, channel_max.end());
  return *mid > 0 ? top / *mid : 0.0;
}

}  // namespace kvq
