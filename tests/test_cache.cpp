// The streaming cache: windows and flushes at every boundary, key normalization,
// attention from packed codes against double precision, OpenMP determinism, storage.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <omp.h>

#include "core/half.h"
#include "cpu_ref/attention.h"
#include "cpu_ref/tensor_cache.h"
#include "naive_reference.h"

namespace kvq {
namespace {

// Independent statement of the window rules (docs/SPEC.md, "Windows").
struct Counts {
  int sink = 0, quantized = 0, recent = 0;
};
Counts simulate(int S, int R, int F, int prefill, int total) {
  Counts c;
  c.sink = std::min(S, prefill);
  const int rest = prefill - c.sink;
  if (rest > R) {
    // Largest multiple of F that leaves at most R tokens recent... shrunk so it never exceeds rest.
    int q = 0;
    while (q < rest - R) q += F;
    while (q > rest) q -= F;
    c.quantized = q;
  }
  c.recent = rest - c.quantized;
  for (int t = prefill; t < total; ++t) {
    if (c.sink < S) {
      ++c.sink;
      continue;
    }
    if (++c.recent >= R + F) {
      c.quantized += F;
      c.recent -= F;
    }
  }
  return c;
}

TensorSpec tensor(Mode mode, int bits, GroupAxis axis, int group, int flush) {
  TensorSpec t;
  t.mode = mode;
  t.bits = bits;
  t.group_axis = axis;
  t.group_size = group;
  t.flush = flush;
  return t;
}

TEST(Windows, EveryBoundary) {
  const int d = 64;
  struct Config {
    TensorSpec spec;
    int S, R;
  };
  const std::vector<Config> configs = {
      {tensor(Mode::sym, 3, GroupAxis::channel, 32, 1), 32, 96},    // InnerQ keys
      {tensor(Mode::hybrid, 2, GroupAxis::token, 32, 32), 32, 96},  // InnerQ values
      {tensor(Mode::asym, 2, GroupAxis::token, 32, 32), 0, 128},    // KIVI keys
      {tensor(Mode::asym, 2, GroupAxis::channel, 32, 1), 0, 128},   // KIVI values
      {tensor(Mode::asym, 2, GroupAxis::token, 16, 48), 5, 7},      // odd windows, flush of 3 groups
      {tensor(Mode::sym, 4, GroupAxis::channel, 16, 1), 0, 0},      // no windows at all
  };
  for (const auto& cfg : configs) {
    const int S = cfg.S, R = cfg.R, F = cfg.spec.flush;
    std::vector<int> lengths = {1, 3, S + R - 1, S + R, S + R + 1, S + R + F - 1, S + R + F, S + R + F + 1,
                                S + R + 5 * F + 3, S / 2};
    for (int total : lengths) {
      if (total <= 0) continue;
      for (int prefill : {0, 1, total / 2, total}) {
        SCOPED_TRACE(fmt::format("{} S={} R={} F={} total={} prefill={}", to_string(cfg.spec.group_axis), S, R, F, total,
                                 prefill));
        const auto rows = test::random_rows(total, d, static_cast<std::uint64_t>(total * 31 + prefill));
        cpu::TensorCache cache(cfg.spec, d, S, R, false);
        cache.prefill(rows.data(), prefill);
        for (int t = prefill; t < total; ++t) cache.append(rows.data() + static_cast<std::size_t>(t) * d);
        const Counts expected = simulate(S, R, F, prefill, total);
        ASSERT_EQ(cache.size(), total);
        EXPECT_EQ(cache.sink_tokens(), expected.sink);
        EXPECT_EQ(cache.quantized_tokens(), expected.quantized);
        EXPECT_EQ(cache.recent_tokens(), expected.recent);
        if (cfg.spec.group_axis == GroupAxis::token) {
          EXPECT_EQ(cache.quantized_tokens() % cfg.spec.group_size, 0);
        }
        // Window tokens are exactly their fp16 values; quantized ones are not all exact.
        std::vector<float> out(static_cast<std::size_t>(total) * d);
        cache.dequantize(out.data());
        std::size_t inexact = 0;
        for (int t = 0; t < total; ++t) {
          const bool window = t < expected.sink || t >= expected.sink + expected.quantized;
          for (int c = 0; c < d; ++c) {
            const float x = rows[static_cast<std::size_t>(t) * d + c], y = out[static_cast<std::size_t>(t) * d + c];
            if (window) {
              ASSERT_EQ(y, round_to_half(x)) << "token " << t;
            } else {
              inexact += y != x;
            }
          }
        }
        if (expected.quantized > 0) {
          EXPECT_GT(inexact, 0u);
        }
      }
    }
  }
}

TEST(KeyNorm, FoldingIntoTheQueryChangesNoScoreBeyondRounding) {
  const int d = 128, n = 300;
  const auto keys = test::random_rows(n, d, 99, 50.0);
  const auto queries = test::random_rows(4, d, 100);
  TensorSpec exact;
  exact.mode = Mode::none;
  cpu::TensorCache plain(exact, d, 0, 0, false), folded(exact, d, 0, 0, true);
  plain.prefill(keys.data(), n - 10);
  folded.prefill(keys.data(), n - 10);
  for (int t = n - 10; t < n; ++t) {
    plain.append(keys.data() + static_cast<std::size_t>(t) * d);
    folded.append(keys.data() + static_cast<std::size_t>(t) * d);
  }
  ASSERT_EQ(folded.norm_factor().size(), static_cast<std::size_t>(d));
  std::vector<float> a(n), b(n);
  for (int q = 0; q < 4; ++q) {
    plain.dot_rows(queries.data() + q * d, a.data());
    folded.dot_rows(queries.data() + q * d, b.data());
    for (int t = 0; t < n; ++t) {
      // Two extra fp32 roundings per term (k / f, q * f), over d terms of size |q||k|.
      double scale = 0;
      for (int c = 0; c < d; ++c) scale += std::fabs(queries[q * d + c] * keys[static_cast<std::size_t>(t) * d + c]);
      EXPECT_NEAR(a[t], b[t], 4e-7 * scale) << "token " << t;
    }
  }
}

TEST(KeyNorm, FactorIsFrozenOnTheFirstQuantizedBatch) {
  const int d = 64, S = 4, R = 8;
  auto keys = test::random_rows(100, d, 5);
  cpu::TensorCache cache(tensor(Mode::sym, 3, GroupAxis::channel, 32, 1), d, S, R, true);
  cache.prefill(keys.data(), 30);  // quantizes tokens 4..21
  const auto first = cache.norm_factor();
  ASSERT_EQ(first.size(), static_cast<std::size_t>(d));
  for (int c = 0; c < d; ++c) {
    float m = 0;
    for (int t = S; t < 30 - R; ++t) m = std::max(m, std::fabs(keys[static_cast<std::size_t>(t) * d + c]));
    EXPECT_EQ(half_bits_to_float(first[c]), round_to_half(std::sqrt(m))) << c;
  }
  keys[static_cast<std::size_t>(40) * d + 3] = 1000.0f;  // a later outlier must not move the frozen factor
  for (int t = 30; t < 100; ++t) cache.append(keys.data() + static_cast<std::size_t>(t) * d);
  EXPECT_EQ(cache.norm_factor(), first);
}

struct LayoutCase {
  Mode mode;
  int bits;
  GroupAxis axis;
  int group;
};

// Attention computed from the packed codes equals attention over the dequantized cache
// computed in double: only fp32 accumulation in another order separates them.
TEST(Attention, PackedProductsMatchDoubleOnTheDequantizedCache) {
  std::vector<LayoutCase> cases;
  for (Mode mode : {Mode::sym, Mode::asym, Mode::hybrid})
    for (int bits : {2, 3, 4, 8})
      for (GroupAxis axis : {GroupAxis::channel, GroupAxis::token})
        for (int group : {16, 32, 64, 128}) cases.push_back({mode, bits, axis, group});
  const int d = 128;
  for (const auto& c : cases) {
    SCOPED_TRACE(fmt::format("{}{} {} g{}", to_string(c.mode), c.bits, to_string(c.axis), c.group));
    const int n = 1031 + c.group;  // spans two product blocks, odd
    const TensorSpec t = tensor(c.mode, c.bits, c.axis, c.group, c.axis == GroupAxis::token ? c.group : 1);
    const auto k_rows = test::random_rows(n, d, 11 + c.bits);
    const auto v_rows = test::random_rows(n, d, 12 + c.bits, 3.0);
    const auto q = test::random_rows(1, d, 13);
    cpu::TensorCache keys(t, d, 7, 20, true), values(t, d, 7, 20, false);
    keys.prefill(k_rows.data(), n - 5);
    values.prefill(v_rows.data(), n - 5);
    for (int i = n - 5; i < n; ++i) {
      keys.append(k_rows.data() + static_cast<std::size_t>(i) * d);
      values.append(v_rows.data() + static_cast<std::size_t>(i) * d);
    }
    ASSERT_GT(keys.quantized_tokens(), 1000);
    const test::AttentionNmse e = test::packed_vs_dequantized(keys, values, q.data());
    EXPECT_LT(e.scores, 1e-10);  // normalized MSE of the logits
    // The output sums ~1000 terms in fp32 in the zero-point form |s|*sum(p*f) + z_eff*sum(p), whose two parts
    // cancel (by up to 2^(b-1) times the result): a normalized MSE near 4e-9 is measured at 4 bits, G=128.
    EXPECT_LT(e.output, 2e-8);
  }
}

TEST(Attention, OpenMPEqualsSerialBitForBit) {
  const int d = 64, n = 5000;
  for (const auto& preset_name : {"innerq_hybrid", "kivi"}) {
    const CacheSpec s = preset(preset_name);
    const auto k_rows = test::random_rows(n, d, 21), v_rows = test::random_rows(n, d, 22), q = test::random_rows(1, d, 23);
    cpu::TensorCache keys(s.k, d, s.sink, s.recent, s.key_norm), values(s.v, d, s.sink, s.recent, false);
    keys.prefill(k_rows.data(), n);
    values.prefill(v_rows.data(), n);
    cpu::AttentionResult serial, parallel;
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    cpu::quantized_attention(keys, values, q.data(), serial);
    omp_set_num_threads(std::max(2, threads));
    cpu::quantized_attention(keys, values, q.data(), parallel);
    omp_set_num_threads(threads);
    EXPECT_EQ(serial.scores, parallel.scores) << preset_name;
    EXPECT_EQ(serial.output, parallel.output) << preset_name;
  }
}

TEST(Quantizer, ParallelPackingEqualsSerialBitForBit) {
  const int d = 128, n = 999 + 32;
  const auto rows = test::random_rows(n - n % 32, d, 31);
  for (const auto& name : {"innerq_hybrid", "kivi", "q4_1"}) {
    const CacheSpec s = preset(name);
    for (const TensorSpec* t : {&s.k, &s.v}) {
      const int threads = omp_get_max_threads();
      omp_set_num_threads(1);
      cpu::PackedRegion serial(*t, d);
      serial.append(rows.data(), n - n % 32);
      omp_set_num_threads(std::max(2, threads));
      cpu::PackedRegion parallel(*t, d);
      parallel.append(rows.data(), n - n % 32);
      omp_set_num_threads(threads);
      EXPECT_EQ(serial.codes(), parallel.codes()) << name;
      EXPECT_EQ(serial.scales().half_bits(), parallel.scales().half_bits()) << name;
      EXPECT_EQ(serial.zeros().half_bits(), parallel.zeros().half_bits()) << name;
      EXPECT_EQ(serial.zero_base(), parallel.zero_base()) << name;
    }
  }
}

TEST(Storage, AccountingEqualsAllocation) {
  const int d = 128;
  for (const auto& name : preset_names()) {
    for (int n : {1, 33, 257, 1000}) {
      CacheSpec s = preset(name);
      const auto rows = test::random_rows(n, d, 41);
      // One head stands for its layer: its own RMS is then the omni-token scale.
      const auto omni = cpu::omni_token_scale({rows.data()}, n, d);
      for (const TensorSpec* t : {&s.k, &s.v}) {
        cpu::TensorCache cache = cpu::make_cache(s, t == &s.k ? TensorKind::key : TensorKind::value, d);
        cache.prefill(rows.data(), n / 2, omni.data());
        for (int i = n / 2; i < n; ++i) cache.append(rows.data() + static_cast<std::size_t>(i) * d, omni[i]);
        StorageCounts counts;
        if (t->quantized()) {
          counts.window_tokens = cache.sink_tokens() + cache.recent_tokens();
          counts.quantized_tokens = cache.quantized_tokens();
          if (const auto* region = cache.region())
            for (std::size_t g = 0; g < region->scales().size(); ++g)
              counts.asym_groups += t->mode == Mode::hybrid && region->scales().sign_bit(g);
        } else {
          counts.dense_tokens = n;
        }
        counts.norm_factor = !cache.norm_factor().empty();
        counts.scaled_tokens = static_cast<int>(cache.token_scales().size());
        EXPECT_EQ(cache.bytes(), storage_bytes(*t, d, counts)) << name << " n=" << n;
      }
    }
  }
}

}  // namespace
}  // namespace kvq

#include "core/metrics.h"
#include "cpu_ref/evaluate.h"
#include "data/synth.h"

namespace kvq {
namespace {

// The certified bound (e^(2 eps) - 1)/2 is never below the measured TV when scores are
// perturbed by quantization: checked per query on a synthetic cache for several presets.
TEST(Metrics, TvBoundIsNeverBelowTheMeasuredTv) {
  data::SynthConfig c;
  c.num_layers = 1;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.seq_len = 400;
  c.seed = 9;
  const auto slab = data::synth_slab(c, 0, 1);
  for (const char* name : {"kivi", "innerq_hybrid", "q4_0", "per_token"}) {
    const CacheSpec spec = preset(name);
    cpu::TensorCache keys(spec.k, 64, spec.sink, spec.recent, spec.key_norm), values(spec.v, 64, spec.sink, spec.recent, false);
    keys.prefill(slab.keys.data(), 300);
    values.prefill(slab.values.data(), 300);
    cpu::AttentionResult got;
    cpu::ReferenceAttention want;
    int checked = 0;
    for (int t = 300; t < 400; ++t) {
      keys.append(&slab.keys[static_cast<std::size_t>(t) * 64]);
      values.append(&slab.values[static_cast<std::size_t>(t) * 64]);
      for (const auto& q : slab.queries) {
        cpu::quantized_attention(keys, values, &q[static_cast<std::size_t>(t) * 64], got);
        cpu::reference_attention(slab.keys.data(), slab.values.data(), t + 1, 64, &q[static_cast<std::size_t>(t) * 64], want);
        const AttentionMetrics m = attention_metrics(want.scores, want.probs, want.output, got.scores, got.probs, got.output);
        ASSERT_GE(m.tv_bound, m.tv) << name << " position " << t;
        EXPECT_NEAR(m.tv_bound, 0.5 * std::expm1(2 * m.score_max), 1e-12);
        ++checked;
      }
    }
    EXPECT_EQ(checked, 200);
  }
}

}  // namespace
}  // namespace kvq
