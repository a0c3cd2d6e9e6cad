// The rotation family (issue 7): Walsh-Hadamard and random rotations, token scales (per head and
// OScaR's omni-token), Lloyd-Max codebooks, and what the quantizer sees. Each against a naive
// double-precision reference: the Hadamard matrix by its definition, Gaussian integrals by sampling.
#include <gtest/gtest.h>

#include <bitset>
#include <cmath>
#include <random>

#include "core/codebook.h"
#include "core/error.h"
#include "core/metrics.h"
#include "core/rotation.h"
#include "cpu_ref/attention.h"
#include "cpu_ref/evaluate.h"
#include "cpu_ref/tensor_cache.h"
#include "naive_reference.h"

namespace kvq {
namespace {

// H_d[i][j] = (-1)^popcount(i & j) (Sylvester order), times the signs, over sqrt(d), in double.
std::vector<double> naive_rotation(const Rotator& r, int d) {
  std::vector<double> m(static_cast<std::size_t>(d) * d);
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) {
      const double h = std::bitset<32>(static_cast<unsigned>(i & j)).count() % 2 ? -1.0 : 1.0;
      m[static_cast<std::size_t>(i) * d + j] = h * (r.signs().empty() ? 1.0 : r.signs()[j]) / std::sqrt(double(d));
    }
  return m;
}

std::vector<double> apply(const std::vector<double>& m, const float* x, int d) {
  std::vector<double> y(static_cast<std::size_t>(d), 0.0);
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) y[i] += m[static_cast<std::size_t>(i) * d + j] * x[j];
  return y;
}

TEST(Rotation, MatchesTheHadamardMatrixByDefinition) {
  for (Rotation kind : {Rotation::hadamard, Rotation::random}) {
    for (int d : {1, 2, 32, 64, 128, 256}) {
      const Rotator r(kind, d, rotation_stream(7, TensorKind::key));
      const auto m = naive_rotation(r, d);
      const auto rows = test::random_rows(5, d, 11 + d, 5.0);
      for (int t = 0; t < 5; ++t) {
        std::vector<float> x(rows.begin() + t * d, rows.begin() + (t + 1) * d);
        const auto want = apply(m, x.data(), d);
        double norm = 0;
        for (float v : x) norm += std::fabs(v);
        r.forward(x.data());
        // fp32 butterflies: log2(d) additions per output, each off by at most half an ulp of the partial sum.
        for (int i = 0; i < d; ++i) ASSERT_NEAR(x[i], want[i], 1e-6 * norm) << to_string(kind) << " d=" << d;
      }
    }
  }
}

TEST(Rotation, IsOrthogonalAndInvertsExactly) {
  for (Rotation kind : {Rotation::hadamard, Rotation::random}) {
    for (int d : {32, 64, 128}) {
      const Rotator r(kind, d, rotation_stream(3, TensorKind::value));
      // Columns R e_j, then R^T R = I in double.
      std::vector<std::vector<float>> cols(static_cast<std::size_t>(d), std::vector<float>(static_cast<std::size_t>(d), 0.0f));
      for (int j = 0; j < d; ++j) {
        cols[j][j] = 1.0f;
        r.forward(cols[j].data());
      }
      for (int i = 0; i < d; ++i)
        for (int j = 0; j < d; ++j) {
          double dot = 0;
          for (int c = 0; c < d; ++c) dot += static_cast<double>(cols[i][c]) * cols[j][c];
          ASSERT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-6);
        }
      const auto rows = test::random_rows(20, d, 5);
      for (int t = 0; t < 20; ++t) {
        std::vector<float> x(rows.begin() + t * d, rows.begin() + (t + 1) * d), y = x;
        r.forward(y.data());
        r.inverse(y.data());
        for (int c = 0; c < d; ++c) ASSERT_NEAR(y[c], x[c], 1e-5 * (1 + std::fabs(x[c])));
      }
    }
  }
}

TEST(Rotation, RandomSignsAreSeededAndDifferForKeysAndValues) {
  const int d = 128;
  const Rotator k0(Rotation::random, d, rotation_stream(0, TensorKind::key));
  const Rotator k0_again(Rotation::random, d, rotation_stream(0, TensorKind::key));
  const Rotator v0(Rotation::random, d, rotation_stream(0, TensorKind::value));
  const Rotator k1(Rotation::random, d, rotation_stream(1, TensorKind::key));
  EXPECT_EQ(k0.signs(), k0_again.signs());
  EXPECT_NE(k0.signs(), v0.signs());
  EXPECT_NE(k0.signs(), k1.signs());
  int negative = 0;
  for (float s : k0.signs()) {
    ASSERT_TRUE(s == 1.0f || s == -1.0f);
    negative += s < 0;
  }
  EXPECT_GT(negative, d / 4);  // a fair coin: 64 +- 6 expected; this fails only for a broken draw
  EXPECT_LT(negative, 3 * d / 4);
  const Rotator hadamard(Rotation::hadamard, d, 99);
  for (float s : hadamard.signs()) EXPECT_EQ(s, 1.0f);
}

// Without quantization a rotation (and a token scale, and key normalization) changes no score
// and no output beyond fp32 rounding.
TEST(Rotation, ScoresAndOutputsUnchangedWithoutQuantization) {
  const int d = 64, n = 77;
  const auto rows = test::random_rows(n, d, 21);
  const auto q = test::random_rows(1, d, 22, 1.0);
  std::mt19937_64 rng(23);
  std::vector<float> p(static_cast<std::size_t>(n));
  for (auto& x : p) x = std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
  TensorSpec plain;
  cpu::TensorCache reference(plain, d, 0, 0, false);
  reference.prefill(rows.data(), n);
  std::vector<float> s_ref(static_cast<std::size_t>(n)), o_ref(static_cast<std::size_t>(d));
  reference.dot_rows(q.data(), s_ref.data());
  reference.weighted_sum(p.data(), o_ref.data());
  for (Rotation kind : {Rotation::hadamard, Rotation::random})
    for (TokenScale scale : {TokenScale::none, TokenScale::head})
      for (bool key_norm : {false, true}) {
        SCOPED_TRACE(std::string(to_string(kind)) + " " + to_string(scale) + (key_norm ? " key_norm" : ""));
        TensorSpec t;
        t.rotation = kind;
        t.token_scale = scale;
        cpu::TensorCache cache(t, d, 0, 0, key_norm, 5);
        cache.prefill(rows.data(), n - 10);
        for (int i = n - 10; i < n; ++i) cache.append(&rows[static_cast<std::size_t>(i) * d]);
        std::vector<float> s(static_cast<std::size_t>(n)), o(static_cast<std::size_t>(d)), x(rows.size());
        cache.dot_rows(q.data(), s.data());
        cache.weighted_sum(p.data(), o.data());
        cache.dequantize(x.data());
        double qn = 0, rn = 0;
        for (float v : q) qn += v * v;
        for (float v : rows) rn = std::max(rn, static_cast<double>(std::fabs(v)));
        // |s - s'| <= a few ulps of |q| |k| (rotation rounding on both sides).
        for (int t2 = 0; t2 < n; ++t2) ASSERT_NEAR(s[t2], s_ref[t2], 1e-5 * std::sqrt(qn) * rn * std::sqrt(double(d)));
        for (int c = 0; c < d; ++c) ASSERT_NEAR(o[c], o_ref[c], 1e-5 * rn * n);
        for (std::size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], rows[i], 1e-5 * rn);
      }
}

// A hand-made two-head layer: the omni-token scale is the RMS over both heads' channels.
TEST(TokenScale, OmniSpansEveryKvHeadOfTheToken) {
  const int d = 32;
  std::vector<float> h0(2 * d, 0.0f), h1(2 * d, 0.0f);
  h0[0] = 3.0f, h0[1] = 4.0f;                     // token 0: only head 0, norm 5
  for (int c = 0; c < d; ++c) h1[d + c] = 1.0f;  // token 1: only head 1, norm sqrt(32)
  const auto omni = cpu::omni_token_scale({h0.data(), h1.data()}, 2, d);
  EXPECT_FLOAT_EQ(omni[0], static_cast<float>(std::sqrt(25.0 / 64)));
  EXPECT_FLOAT_EQ(omni[1], static_cast<float>(std::sqrt(32.0 / 64)));
  // The cache stores the scales it is given (omni) or its own head's RMS (head).
  TensorSpec t;
  t.token_scale = TokenScale::omni;
  cpu::TensorCache cache(t, d, 0, 0, false);
  cache.prefill(h0.data(), 2, omni.data());
  EXPECT_EQ(cache.token_scales(), omni);
  t.token_scale = TokenScale::head;
  cpu::TensorCache own(t, d, 0, 0, false);
  own.prefill(h0.data(), 2);
  EXPECT_FLOAT_EQ(own.token_scales()[0], static_cast<float>(std::sqrt(25.0 / 32)));
  EXPECT_EQ(own.token_scales()[1], 0.0f);  // an all-zero token keeps scale 0 and stays zero
  std::vector<float> x(h0.size());
  own.dequantize(x.data());
  EXPECT_EQ(x, h0);
}

// The omni scales reach decode appends too: windows flush with the scale their tokens came with.
TEST(TokenScale, OmniScalesFollowTheirTokensThroughTheWindows) {
  const int d = 64, n = 300;
  CacheSpec spec = preset("oscar");
  const auto h0 = test::random_rows(n, d, 31), h1 = test::random_rows(n, d, 32);
  const auto omni = cpu::omni_token_scale({h0.data(), h1.data()}, n, d);
  cpu::TensorCache keys = cpu::make_cache(spec, TensorKind::key, d);
  keys.prefill(h0.data(), 100, omni.data());
  for (int t = 100; t < n; ++t) keys.append(&h0[static_cast<std::size_t>(t) * d], omni[t]);
  ASSERT_EQ(keys.quantized_tokens(), static_cast<int>(keys.token_scales().size()));
  for (int t = 0; t < keys.quantized_tokens(); ++t) ASSERT_EQ(keys.token_scales()[t], omni[t]) << t;
}

TEST(Codebook, DistortionsMatchTheKnownLloydMaxValues) {
  const double known[] = {0.3634, 0.1175, 0.0345, 0.0095};  // per coordinate, b = 1..4 (4 decimals)
  for (int b = 1; b <= 4; ++b) {
    const Codebook& cb = lloyd_max(b);
    EXPECT_NEAR(cb.distortion, known[b - 1], 6e-5) << b;  // the published values are rounded to 1e-4
    ASSERT_EQ(cb.levels.size(), std::size_t{1} << b);
    for (std::size_t i = 0; i < cb.levels.size(); ++i) {
      EXPECT_NEAR(cb.levels[i], -cb.levels[cb.levels.size() - 1 - i], 1e-6);  // symmetric
      if (i) {
        EXPECT_LT(cb.levels[i - 1], cb.levels[i]);
      }
    }
    // An independent check of the integrals: the mean squared error of 2e6 seeded Gaussian samples
    // (standard error under 0.2% of D), quantized by the same code rule the packer uses.
    std::mt19937_64 rng(40 + b);
    std::normal_distribution<double> normal;
    double sum = 0;
    const int samples = 2000000;
    for (int i = 0; i < samples; ++i) {
      const float x = static_cast<float>(normal(rng));
      const float e = x - cb.levels[codebook_code(x, cb.thresholds.data(), static_cast<int>(cb.thresholds.size()))];
      sum += static_cast<double>(e) * e;
    }
    EXPECT_NEAR(sum / samples, cb.distortion, 0.01 * cb.distortion) << b;
  }
  EXPECT_THROW(lloyd_max(5), kvq::Error);
}

// turbo3's cache against a naive reference: x^ = sigma * R^T level[nearest(R x / sigma)] in double.
TEST(Codebook, Turbo3CacheMatchesTheNaiveReference) {
  const int d = 64, n = 131;
  const CacheSpec spec = preset("turbo3");
  for (TensorKind kind : {TensorKind::key, TensorKind::value}) {
    const auto rows = test::random_rows(n, d, 50 + static_cast<int>(kind));
    cpu::TensorCache cache = cpu::make_cache(spec, kind, d);
    cache.prefill(rows.data(), n);
    ASSERT_EQ(cache.quantized_tokens(), n);
    std::vector<float> got(rows.size());
    cache.dequantize(got.data());
    const Rotator r(Rotation::random, d, rotation_stream(spec.rotation_seed, kind));
    const auto m = naive_rotation(r, d);
    const Codebook& cb = lloyd_max(3);
    int skipped = 0;
    for (int t = 0; t < n; ++t) {
      bool near_tie = false;
      const float* x = &rows[static_cast<std::size_t>(t) * d];
      double ss = 0;
      for (int c = 0; c < d; ++c) ss += double(x[c]) * x[c];
      const double sigma = std::sqrt(ss / d);
      std::vector<float> unit(x, x + d);
      auto y = apply(m, unit.data(), d);
      std::vector<double> level(static_cast<std::size_t>(d));
      for (int c = 0; c < d; ++c) {
        y[c] /= sigma;
        std::size_t best = 0;
        for (std::size_t i = 1; i < cb.levels.size(); ++i)
          if (std::fabs(y[c] - cb.levels[i]) < std::fabs(y[c] - cb.levels[best])) best = i;
        level[c] = cb.levels[best];
        // fp32 vs double may choose the other level within rounding of a threshold.
        for (float th : cb.thresholds) near_tie |= std::fabs(y[c] - th) < 1e-5;
      }
      if (near_tie) {  // one coordinate's level moves every output of the token through R^T
        ++skipped;
        continue;
      }
      for (int c = 0; c < d; ++c) {
        double want = 0;  // R^T level: the transpose of the naive matrix
        for (int i = 0; i < d; ++i) want += m[static_cast<std::size_t>(i) * d + c] * level[i];
        want *= sigma;
        ASSERT_NEAR(got[static_cast<std::size_t>(t) * d + c], want, 1e-5 * (1 + sigma)) << t;
      }
    }
    EXPECT_LE(skipped, n / 50);  // near-ties are rare: the comparison covers nearly every token
    // The packed dot product equals q . x^ from the dequantized rows.
    const auto q = test::random_rows(1, d, 60, 1.0);
    std::vector<float> s(static_cast<std::size_t>(n));
    cache.dot_rows(q.data(), s.data());
    for (int t = 0; t < n; ++t) {
      double want = 0, scale = 0;
      for (int c = 0; c < d; ++c) {
        want += double(q[c]) * got[static_cast<std::size_t>(t) * d + c];
        scale += std::fabs(double(q[c]) * got[static_cast<std::size_t>(t) * d + c]);
      }
      ASSERT_NEAR(s[t], want, 1e-5 * scale);
    }
    // Storage: 3-bit codes and one fp32 scale per token, nothing else.
    EXPECT_EQ(cache.bytes(), static_cast<std::size_t>(n) * (d / 32 * 3 * 4 + 4));
  }
}

// Attention over each rotation-family cache, computed from the packed codes (rotated q, token
// scales, outputs rotated back, fp16 windows), equals double precision over the cache's own
// dequantized tensor: the transform is undone consistently on every path. Values are rotated and
// omni-scaled too in one case, to cover that path.
TEST(Rotation, PackedAttentionMatchesDoubleOnTheDequantizedCache) {
  const int d = 128, n = 1031 + 64;  // two product blocks, odd
  const auto k0 = test::random_rows(n, d, 81), k1 = test::random_rows(n, d, 82);
  const auto v0 = test::random_rows(n, d, 83, 3.0), v1 = test::random_rows(n, d, 84, 3.0);
  const auto ks = cpu::omni_token_scale({k0.data(), k1.data()}, n, d), vs = cpu::omni_token_scale({v0.data(), v1.data()}, n, d);
  const auto q = test::random_rows(1, d, 85, 1.0);
  std::vector<CacheSpec> specs;
  for (const char* name : {"oscar", "kivi_hadamard", "innerq_hadamard", "turbo3"}) specs.push_back(preset(name));
  CacheSpec both = preset("oscar");
  both.v.rotation = Rotation::random;
  both.v.token_scale = TokenScale::omni;
  both.rotation_seed = 3;
  specs.push_back(both);
  for (const CacheSpec& spec : specs) {
    SCOPED_TRACE(describe(spec));
    auto keys = cpu::make_cache(spec, TensorKind::key, d), values = cpu::make_cache(spec, TensorKind::value, d);
    keys.prefill(k0.data(), n - 40, ks.data());
    values.prefill(v0.data(), n - 40, vs.data());
    for (int t = n - 40; t < n; ++t) {
      keys.append(&k0[static_cast<std::size_t>(t) * d], ks[t]);
      values.append(&v0[static_cast<std::size_t>(t) * d], vs[t]);
    }
    ASSERT_GT(keys.quantized_tokens(), 900);
    const test::AttentionNmse e = test::packed_vs_dequantized(keys, values, q.data());
    // fp32 products in another order, plus the rotation's rounding of q and of the dequantized rows.
    EXPECT_LT(e.scores, 1e-10);
    EXPECT_LT(e.output, 2e-8);  // as test_cache's: zero-point cancellation
  }
}

// What evaluation reports about the keys the quantizer sees: a per-head token scale makes every
// token norm equal (imbalance 1); a rotation leaves token norms alone but spreads outlier channels.
TEST(Imbalance, BeforeAndAfterRotationAndScaling) {
  const int d = 64, n = 256;
  auto keys = test::random_rows(n, d, 70);
  for (int t = 0; t < n; t += 37)
    for (int c = 0; c < d; ++c) keys[static_cast<std::size_t>(t) * d + c] *= 0.05f;  // low-norm "sink" tokens
  const auto values = test::random_rows(n, d, 71);
  const auto q = test::random_rows(n, d, 72, 1.0);
  cpu::HeadData data;
  data.seq_len = n;
  data.head_dim = d;
  data.keys = keys.data();
  data.values = values.data();
  data.queries = {q.data()};
  const cpu::EvalWindow window{n - 4, n - 4};
  CacheSpec spec = preset("kivi");
  const auto plain = cpu::evaluate_head(spec, data, window);
  EXPECT_GT(plain.key_imbalance_in, 5.0);
  EXPECT_EQ(plain.key_imbalance, plain.key_imbalance_in);
  EXPECT_GT(plain.key_outlier_in, 8.0);
  spec.k.rotation = Rotation::hadamard;
  const auto rotated = cpu::evaluate_head(spec, data, window);
  EXPECT_NEAR(rotated.key_imbalance, rotated.key_imbalance_in, 1e-4 * rotated.key_imbalance_in);
  EXPECT_LT(rotated.key_outlier, rotated.key_outlier_in / 2);
  spec.k.token_scale = TokenScale::head;
  const auto scaled = cpu::evaluate_head(spec, data, window);
  EXPECT_NEAR(scaled.key_imbalance, 1.0, 1e-5);
}

}  // namespace
}  // namespace kvq
