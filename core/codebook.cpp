#include "core/codebook.h"

#include <cmath>
#include <map>
#include <mutex>

#include "core/error.h"

namespace kvq {
namespace {

double pdf(double x) { return std::isinf(x) ? 0.0 : std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI); }
double cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

Codebook compute(int bits) {
  const int L = 1 << bits;
  std::vector<double> c(static_cast<std::size_t>(L)), t(static_cast<std::size_t>(L + 1));
  for (int i = 0; i < L; ++i) c[i] = -3.0 + 6.0 * (i + 0.5) / L;  // any ascending start converges
  Codebook cb;
  cb.bits = bits;
  for (cb.iterations = 1; cb.iterations <= 200000; ++cb.iterations) {
    // Nearest-neighbour cells, then each level moves to its cell's centroid:
    // E[X | a < X < b] = (pdf(a) - pdf(b)) / (cdf(b) - cdf(a)).
    t[0] = -INFINITY;
    t[L] = INFINITY;
    for (int i = 1; i < L; ++i) t[i] = 0.5 * (c[i - 1] + c[i]);
    double moved = 0;
    for (int i = 0; i < L; ++i) {
      const double centroid = (pdf(t[i]) - pdf(t[i + 1])) / (cdf(t[i + 1]) - cdf(t[i]));
      moved = std::max(moved, std::fabs(centroid - c[i]));
      c[i] = centroid;
    }
    if (moved < 1e-13) break;
  }
  // With centroid levels, E[(X - Q)^2] = E[X^2] - sum_i P_i c_i^2.
  double d = 1.0;
  for (int i = 1; i < L; ++i) t[i] = 0.5 * (c[i - 1] + c[i]);
  for (int i = 0; i < L; ++i) d -= (cdf(t[i + 1]) - cdf(t[i])) * c[i] * c[i];
  cb.distortion = d;
  for (int i = 0; i < L; ++i) cb.levels.push_back(static_cast<float>(c[i]));
  for (int i = 1; i < L; ++i) cb.thresholds.push_back(static_cast<float>(t[i]));
  return cb;
}

}  // namespace

const Codebook& lloyd_max(int bits) {
  if (bits < 1 || bits > 4) fail("codebook: got {} bits, expected 1 to 4", bits);
  static std::mutex lock;
  static std::map<int, Codebook> cache;
  std::lock_guard<std::mutex> guard(lock);
  auto it = cache.find(bits);
  if (it == cache.end()) it = cache.emplace(bits, compute(bits)).first;
  return it->second;  // std::map never moves its elements
}

}  // namespace kvq
