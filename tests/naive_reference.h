#pragma once
// An independent, deliberately naive reference for the tests: group quantization
// in double precision straight from ALGORITHMS.md, and the packed layout indexing
// re-derived from docs/PACKED.md (not from core/packed.h's helpers).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/half.h"
#include "cpu_ref/attention.h"
#include "cpu_ref/tensor_cache.h"

namespace kvq::test {

// Reads code i of a chunk by the documented bit layout.
inline int doc_code(const std::uint32_t* chunk, int bits, int i) {
  if (bits == 3) {
    // Half i / 16 owns bytes 2h, 2h+1 of each word: 12 codes whole (two a byte, above bit 1), 4 split.
    const int half = i / 16, r = i % 16;
    const auto byte = [&](int word, int which) { return static_cast<int>((chunk[word] >> (8 * (2 * half + which))) & 0xffu); };
    if (r < 12) return (byte(r / 4, (r / 2) % 2) >> (2 + 3 * (r % 2))) & 7;
    const int m = (r - 12) / 2, which = (r - 12) % 2;
    return (byte(m, which) & 3) + 4 * ((byte(2, which) >> m) & 1);
  }
  const int per_word = 32 / bits;
  return static_cast<int>((chunk[i / per_word] >> (bits * (i % per_word))) & ((1u << bits) - 1u));
}

// Round half to even in double.
inline double round_even(double v) {
  const double f = std::floor(v);
  const double diff = v - f;
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return std::fmod(f, 2.0) == 0.0 ? f : f + 1;
}

// Distance of v from a rounding tie (k + 0.5), to skip cases where fp32 and double may disagree.
inline double tie_distance(double v) { return std::fabs(v - std::floor(v) - 0.5); }

inline double stored(double v, bool fp16) {
  return fp16 ? static_cast<double>(kvq::round_to_half(static_cast<float>(v))) : static_cast<double>(static_cast<float>(v));
}

struct RefArm {
  double scale = 0, zero = 0;
  std::vector<int> f;
  double l1 = 0;  // sum |x - x^| in double
};

inline RefArm ref_asym(const std::vector<double>& x, int bits, bool fp16) {
  RefArm a;
  const double lo = *std::min_element(x.begin(), x.end());
  const double hi = *std::max_element(x.begin(), x.end());
  const double top = std::pow(2.0, bits) - 1;
  a.scale = stored((hi - lo) / top, fp16);
  a.zero = stored(lo, fp16);
  for (double v : x) {
    const int f = a.scale == 0 ? 0 : static_cast<int>(std::clamp(round_even((v - a.zero) / a.scale), 0.0, top));
    a.f.push_back(f);
    a.l1 += std::fabs(v - (f * a.scale + a.zero));
  }
  return a;
}

inline RefArm ref_sym(const std::vector<double>& x, int bits, bool twos, bool fp16) {
  RefArm a;
  double amax = 0;
  for (double v : x) amax = std::max(amax, std::fabs(v));
  const double half_range = std::pow(2.0, bits - 1);
  const double divisor = twos ? half_range : half_range - 1;
  const double lo = twos ? -half_range : -(half_range - 1);
  const double hi = half_range - 1;
  a.scale = stored(amax / divisor, fp16);
  for (double v : x) {
    const double level = a.scale == 0 ? 0 : std::clamp(round_even(v / a.scale), lo, hi);
    a.f.push_back(static_cast<int>(level - lo));
    a.l1 += std::fabs(v - level * a.scale);
  }
  return a;
}

// Seeded Gaussian rows with a few large channels, already fp16-representable (quantized
// modes read each token as an fp16 cache holds it).
inline std::vector<float> random_rows(int tokens, int d, std::uint64_t seed, double outlier = 20.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0.0, 1.0);
  std::vector<float> rows(static_cast<std::size_t>(tokens) * d);
  for (int t = 0; t < tokens; ++t)
    for (int c = 0; c < d; ++c) {
      const double scale = (c % 17 == 3) ? outlier : 1.0;
      rows[static_cast<std::size_t>(t) * d + c] = kvq::round_to_half(static_cast<float>(scale * n(rng) + 0.1 * c / d));
    }
  return rows;
}

// Normalized MSE of a result against its double-precision reference: sum (got - want)^2 / sum want^2.
inline double nmse(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return num / den;
}

// Attention over the caches from their packed codes against double precision over what they
// dequantize to: the normalized MSE of the logits and of the output.
struct AttentionNmse {
  double scores = 0, output = 0;
};
inline AttentionNmse packed_vs_dequantized(const cpu::TensorCache& keys, const cpu::TensorCache& values, const float* q) {
  const int n = keys.size(), d = keys.head_dim();
  std::vector<float> k_hat(static_cast<std::size_t>(n) * d), v_hat(k_hat.size());
  keys.dequantize(k_hat.data());
  values.dequantize(v_hat.data());
  cpu::AttentionResult got;
  cpu::quantized_attention(keys, values, q, got);
  cpu::ReferenceAttention want;
  cpu::reference_attention(k_hat.data(), v_hat.data(), n, d, q, want);
  return {nmse(got.scores, want.scores), nmse(got.output, want.output)};
}

}  // namespace kvq::test
