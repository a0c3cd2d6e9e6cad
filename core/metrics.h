#pragma once
// The metrics kvq reports, defined once (docs/METRICS.md gives the formulas).
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

namespace kvq {

struct ReconstructionMetrics {
  double mse = 0;      // mean (x - x^)^2
  double rel_fro = 0;  // ||x - x^||_F / ||x||_F
  double max_abs = 0;  // max |x - x^|
  double snr_db = 0;   // 10 log10(sum x^2 / sum (x - x^)^2); +inf when exact
};

ReconstructionMetrics reconstruction_metrics(const float* x, const float* x_hat, std::size_t n);

struct AttentionMetrics {
  double score_abs = 0;  // mean_j |s_j - s^_j| (logits after 1/sqrt(d))
  double score_rel = 0;  // ||s - s^||_2 / ||s||_2
  double kl = 0;         // KL(p || p^) = sum p log(p / p^)
  double tv = 0;         // total variation, 0.5 sum |p - p^|
  double top8 = 0;       // |top8(p) & top8(p^)| / min(8, n)
  double top32 = 0;      // same for 32
  double out_rel = 0;    // ||o - o^||_2 / ||o||_2
  double score_max = 0;  // eps = max_j |s_j - s^_j|
  // Certified bound on the softmax's movement from the worst score error (ALGORITHMS.md):
  // ||p - p^||_1 <= e^(2 eps) - 1, so TV = ||p - p^||_1 / 2 <= (e^(2 eps) - 1) / 2.
  double tv_bound = 0;
};

// Reference quantities in double, the quantized ones as computed (fp32).
AttentionMetrics attention_metrics(const std::vector<double>& ref_scores, const std::vector<double>& ref_probs,
                                   const std::vector<double>& ref_output, const std::vector<float>& scores,
                                   const std::vector<float>& probs, const std::vector<float>& output);

// Fraction of the k largest entries of a that are among the k largest of b (ties broken by index).
double topk_overlap(const std::vector<double>& a, const std::vector<float>& b, std::size_t k);

// Token-norm imbalance (ALGORITHMS.md, "OScaR"): for each group of `group` consecutive tokens of
// one head's rows (T x d), max/min token L2 norm; a last partial group counts when it has 2+
// tokens; a group with a zero-norm token gives +inf.
std::vector<double> token_norm_imbalance(const float* rows, int tokens, int head_dim, int group);
// max_t |x[t, c]| for each channel c of one head's rows (T x d).
std::vector<double> channel_max_abs(const float* rows, int tokens, int head_dim);
// Channel outliers: the largest per-channel max |x| over the median channel's (0 when the median
// is 0), over the channels given (one head's, or a layer's pooled). A rotation spreads outlier
// channels, which lowers it.
double channel_outlier_ratio(std::vector<double> channel_max);

// Running mean and maximum of one metric.
struct Stat {
  double sum = 0;
  double max = -std::numeric_limits<double>::infinity();
  std::size_t count = 0;
  void add(double v) {
    sum += v;
    max = v > max ? v : max;
    ++count;
  }
  double mean() const { return count ? sum / static_cast<double>(count) : 0.0; }
};

}  // namespace kvq
