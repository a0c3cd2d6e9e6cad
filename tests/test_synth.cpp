// The synthetic generator: deterministic per seed, with the documented structure.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "cpu_ref/attention.h"
#include "data/synth.h"

namespace kvq {
namespace {

data::SynthConfig small() {
  data::SynthConfig c;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.seq_len = 513;
  c.seed = 17;
  return c;
}

TEST(Synth, SameSeedSameTensorsOtherSeedOthers) {
  const auto c = small();
  const auto a = data::synth_slab(c, 1, 1);
  const auto b = data::synth_slab(c, 1, 1);
  EXPECT_EQ(a.keys, b.keys);
  EXPECT_EQ(a.values, b.values);
  EXPECT_EQ(a.queries, b.queries);
  auto other = c;
  other.seed = 18;
  EXPECT_NE(data::synth_slab(other, 1, 1).keys, a.keys);
  EXPECT_NE(data::synth_slab(c, 0, 1).keys, a.keys);  // heads differ from each other
}

TEST(Synth, WrittenDumpIsDeterministicWhateverTheThreads) {
  const std::string p1 = ::testing::TempDir() + "synth_a.h5", p2 = ::testing::TempDir() + "synth_b.h5";
  data::write_synthetic_dump(small(), p1, "test");
  data::write_synthetic_dump(small(), p2, "test");
  data::DumpReader a(p1), b(p2);
  std::vector<float> x, y;
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 4; ++h) {
      a.read_slab(data::Dataset::queries, l, h, x);
      b.read_slab(data::Dataset::queries, l, h, y);
      EXPECT_EQ(x, y);
    }
  std::remove(p1.c_str());
  std::remove(p2.c_str());
}

TEST(Synth, OutlierChannelsAreTheLargest) {
  const auto c = small();
  for (int layer = 0; layer < 2; ++layer) {
    const auto s = data::synth_slab(c, layer, 0);
    ASSERT_EQ(s.outlier_channels.size(), 4u);
    std::vector<double> max_abs(64, 0.0);
    for (int t = 0; t < c.seq_len; ++t)
      for (int ch = 0; ch < 64; ++ch) max_abs[ch] = std::max(max_abs[ch], std::fabs(double(s.keys_pre_rope[t * 64 + ch])));
    std::vector<int> order(64);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return max_abs[a] > max_abs[b]; });
    std::vector<int> top(order.begin(), order.begin() + 4);
    std::sort(top.begin(), top.end());
    EXPECT_EQ(top, s.outlier_channels);
    // At least 10x a typical channel (the median).
    std::vector<double> sorted = max_abs;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_GT(max_abs[s.outlier_channels[0]], 10 * sorted[32] * 0.9);
  }
}

TEST(Synth, SinkHasLowNormAndDrawsMostAttention) {
  const auto c = small();
  const auto s = data::synth_slab(c, 0, 1);
  const int d = 64;
  auto norm = [&](int t) {
    double n = 0;
    for (int ch = 0; ch < d; ++ch) n += double(s.keys[t * d + ch]) * s.keys[t * d + ch];
    return std::sqrt(n);
  };
  std::vector<double> norms;
  for (int t = 1; t < c.seq_len; ++t) norms.push_back(norm(t));
  std::sort(norms.begin(), norms.end());
  EXPECT_LT(norm(0), norms.front());  // lower than every other key
  double sink_share = 0;
  int counted = 0;
  cpu::ReferenceAttention a;
  for (const auto& q : s.queries) {
    for (int t = 64; t < c.seq_len; t += 16) {
      cpu::reference_attention(s.keys.data(), s.values.data(), t + 1, d, q.data() + t * d, a);
      sink_share += a.probs[0];
      ++counted;
    }
  }
  EXPECT_GT(sink_share / counted, 0.5);
}

TEST(Synth, FeaturesSwitchOff) {
  auto c = small();
  c.outlier_channels = 0;
  c.sink = false;
  c.rope = false;
  c.token_norm_sigma = 0;
  const auto s = data::synth_slab(c, 0, 0);
  EXPECT_TRUE(s.outlier_channels.empty());
  EXPECT_EQ(s.keys, s.keys_pre_rope);
}

}  // namespace
}  // namespace kvq
