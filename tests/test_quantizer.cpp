// Packed codes and metadata against the naive double-precision reference, for every
// mode, bit width, group axis, group size and metadata precision.
#include <gtest/gtest.h>

#include <tuple>

#include <fmt/format.h>

#include "core/packed.h"
#include "cpu_ref/packed_region.h"
#include "naive_reference.h"

namespace kvq {
namespace {

using test::RefArm;

struct Case {
  Mode mode;
  int bits;
  GroupAxis axis;
  int group;
  MetaPrecision meta;
  SymLevels levels;
  HybridAsymBits hybrid_bits;
};

std::string case_name(const Case& c) {
  return fmt::format("{}{}_{}_g{}_{}_{}_{}", to_string(c.mode), c.bits, to_string(c.axis), c.group, to_string(c.meta),
                     to_string(c.levels), c.hybrid_bits == HybridAsymBits::b ? "hb" : "hb1");
}

void PrintTo(const Case& c, std::ostream* os) { *os << case_name(c); }

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (Mode mode : {Mode::sym, Mode::asym, Mode::hybrid})
    for (int bits : {2, 3, 4, 8})
      for (GroupAxis axis : {GroupAxis::channel, GroupAxis::token})
        for (int group : {16, 32, 64, 128})
          for (MetaPrecision meta : {MetaPrecision::fp16, MetaPrecision::fp32}) {
            cases.push_back({mode, bits, axis, group, meta, SymLevels::signmag, HybridAsymBits::b_minus_1});
            if (mode != Mode::asym) cases.push_back({mode, bits, axis, group, meta, SymLevels::twos, HybridAsymBits::b});
          }
  return cases;
}

class QuantizerTest : public ::testing::TestWithParam<Case> {};

// Group g's values (as doubles) and the positions of its codes, by the documented layout.
struct GroupView {
  std::vector<double> x;
  std::vector<int> codes;
};

GroupView view(const cpu::PackedRegion& region, const std::vector<float>& rows, int d, int group_index) {
  const TensorSpec& s = region.spec();
  const int G = s.group_size, b = s.bits;
  GroupView v;
  for (int i = 0; i < G; ++i) {
    int t, c;
    std::size_t chunk;
    int pos;
    if (s.group_axis == GroupAxis::channel) {
      t = group_index / (d / G);
      c = (group_index % (d / G)) * G + i;
      chunk = (static_cast<std::size_t>(t) * (d / 32) + c / 32) * b;
      pos = c % 32;
    } else {
      t = (group_index / d) * G + i;
      c = group_index % d;
      chunk = (static_cast<std::size_t>(t / 32) * d + c) * b;
      pos = t % 32;
    }
    v.x.push_back(rows[static_cast<std::size_t>(t) * d + c]);
    v.codes.push_back(test::doc_code(&region.codes()[chunk], b, pos));
  }
  return v;
}

TEST_P(QuantizerTest, CodesAndMetadataMatchNaiveReference) {
  const Case& k = GetParam();
  TensorSpec spec;
  spec.mode = k.mode;
  spec.bits = k.bits;
  spec.group_axis = k.axis;
  spec.group_size = k.group;
  spec.meta = k.meta;
  spec.sym_levels = k.levels;
  spec.hybrid_asym_bits = k.hybrid_bits;
  spec.flush = k.axis == GroupAxis::token ? k.group : 1;
  const int d = 128;
  const int tokens = k.axis == GroupAxis::token ? 3 * k.group : 37;  // odd for per-token groups
  auto rows = test::random_rows(tokens, d, 1234 + k.bits * 7 + k.group);
  // A constant group and an all-zero group, to exercise s = 0.
  for (int c = 0; c < d; ++c) {
    if (k.axis == GroupAxis::channel) {
      rows[static_cast<std::size_t>(1) * d + c] = c < k.group ? 0.75f : rows[static_cast<std::size_t>(1) * d + c];
      rows[static_cast<std::size_t>(2) * d + c] = c < k.group ? 0.0f : rows[static_cast<std::size_t>(2) * d + c];
    }
  }
  if (k.axis == GroupAxis::token) {
    for (int t = 0; t < k.group; ++t) {
      rows[static_cast<std::size_t>(t) * d + 5] = -1.5f;
      rows[static_cast<std::size_t>(t) * d + 6] = 0.0f;
    }
  }

  cpu::PackedRegion region(spec, d);
  region.append(rows.data(), tokens);
  const bool fp16 = k.meta == MetaPrecision::fp16;
  const int groups = tokens * d / k.group;
  ASSERT_EQ(region.scales().size(), static_cast<std::size_t>(groups));
  std::vector<float> dequantized(static_cast<std::size_t>(tokens) * d);
  region.dequantize(dequantized.data());

  std::size_t zero_cursor = 0, checked = 0, near_ties = 0;
  const int hybrid_asym_bits = k.hybrid_bits == HybridAsymBits::b ? k.bits : k.bits - 1;
  for (int g = 0; g < groups; ++g) {
    const GroupView v = view(region, rows, d, g);
    const double scale = region.scales().magnitude(g);
    const bool asym = k.mode == Mode::asym || (k.mode == Mode::hybrid && region.scales().sign_bit(g));
    const int arm_bits = k.mode == Mode::hybrid && asym ? hybrid_asym_bits : k.bits;
    const RefArm ref = asym ? test::ref_asym(v.x, arm_bits, fp16)
                            : test::ref_sym(v.x, arm_bits, k.levels == SymLevels::twos, fp16);
    // Metadata: the stored value of the exact formula, within one ulp of the stored precision
    // (the implementation divides in fp32, the reference in double).
    const double ulp = fp16 ? std::ldexp(1.0, -10) : std::ldexp(1.0, -22);
    EXPECT_NEAR(scale, ref.scale, ulp * ref.scale + 1e-30) << "group " << g;
    double zero = 0;
    if (asym) {
      zero = region.zeros().value(k.mode == Mode::asym ? static_cast<std::size_t>(g) : zero_cursor++);
      EXPECT_NEAR(zero, ref.zero, ulp * std::fabs(ref.zero) + 1e-30) << "group " << g;
    }
    // Codes: recomputed in double from the stored metadata. fp32 computes (x - z) / s with a
    // relative error of about 2^-23, so values that close to a rounding tie may go either way: skip them.
    const double top = std::pow(2.0, arm_bits) - 1;
    const double half_range = std::pow(2.0, k.bits - 1);
    const double lo = k.levels == SymLevels::twos ? -half_range : -(half_range - 1);
    for (int i = 0; i < k.group; ++i) {
      double expected;
      double raw = 0;
      if (scale == 0) {
        expected = asym ? 0 : -lo;
      } else if (asym) {
        raw = (v.x[i] - zero) / scale;
        expected = std::clamp(test::round_even(raw), 0.0, top);
      } else {
        raw = v.x[i] / scale;
        expected = std::clamp(test::round_even(raw), lo, half_range - 1) - lo;
      }
      if (scale != 0 && test::tie_distance(raw) < 3e-7 * (std::fabs(raw) + 1)) {
        ++near_ties;
        continue;
      }
      ASSERT_EQ(v.codes[i], static_cast<int>(expected)) << "group " << g << " element " << i;
      ++checked;
      // Dequantized value: the definitional form.
      const double x_hat = asym ? v.codes[i] * scale + zero : (v.codes[i] + lo) * scale;
      int t = k.axis == GroupAxis::channel ? g / (d / k.group) : (g / d) * k.group + i;
      int c = k.axis == GroupAxis::channel ? (g % (d / k.group)) * k.group + i : g % d;
      // fp32 evaluates f*s + z with two roundings: error up to 2^-24 of each term's magnitude.
      const double terms = std::fabs(v.codes[i] * scale) + std::fabs(asym ? zero : lo * scale);
      EXPECT_NEAR(dequantized[static_cast<std::size_t>(t) * d + c], x_hat, 1.2e-7 * terms + 1e-30);
      if (asym) {
        // |x - x^| <= s/2, plus what storing z and s in fp16 can add at the ends of the range.
        const double lo_x = *std::min_element(v.x.begin(), v.x.end());
        const double hi_x = *std::max_element(v.x.begin(), v.x.end());
        const double slack = std::fabs(zero - lo_x) + top * std::fabs(scale - (hi_x - lo_x) / top);
        EXPECT_LE(std::fabs(v.x[i] - x_hat), scale / 2 + slack + 1e-6 * std::fabs(v.x[i])) << "group " << g;
      }
    }
    if (k.mode == Mode::hybrid) {
      // The kept arm has the lower L1 error; ties go to asymmetric.
      const RefArm a = test::ref_asym(v.x, hybrid_asym_bits, fp16);
      const RefArm s = test::ref_sym(v.x, k.bits, k.levels == SymLevels::twos, fp16);
      const double tolerance = 1e-5 * (a.l1 + s.l1) + 1e-12;
      if (asym) {
        EXPECT_LE(a.l1, s.l1 + tolerance) << "group " << g;
      } else {
        EXPECT_LT(s.l1, a.l1 + tolerance) << "group " << g;
      }
    }
  }
  EXPECT_GT(checked, static_cast<std::size_t>(tokens * d) * 9 / 10) << near_ties << " near ties skipped";
  if (k.mode == Mode::hybrid) {
    EXPECT_EQ(zero_cursor, region.zeros().size());
  }
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, QuantizerTest, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) { return case_name(info.param); });

TEST(Quantizer, ConstantGroupIsExactAndNeverNaN) {
  for (bool fp16 : {true, false}) {
    std::vector<float> x(32, 0.3f);
    std::uint8_t f[32];
    qmath::GroupParams p;
    p.mode = qmath::GroupMode::asym;
    p.bits = 2;
    p.meta_fp16 = fp16;
    const auto g = qmath::quantize_group(x.data(), 1, 32, p, f);
    EXPECT_EQ(g.scale, 0.0f);
    for (int i = 0; i < 32; ++i) {
      EXPECT_EQ(f[i], 0);
      const float x_hat = qmath::dequant_asym(f[i], g.scale, g.zero);
      EXPECT_FALSE(std::isnan(x_hat));
      EXPECT_EQ(x_hat, fp16 ? round_to_half(0.3f) : 0.3f);  // exact to the stored precision
    }
  }
}

TEST(Quantizer, AllZeroGroupGivesZeros) {
  std::vector<float> x(16, 0.0f);
  std::uint8_t f[16];
  for (auto mode : {qmath::GroupMode::sym, qmath::GroupMode::asym, qmath::GroupMode::hybrid}) {
    qmath::GroupParams p;
    p.mode = mode;
    p.bits = 3;
    const auto g = qmath::quantize_group(x.data(), 1, 16, p, f);
    for (int i = 0; i < 16; ++i) {
      const float x_hat = g.asym ? qmath::dequant_asym(f[i], g.scale, g.zero)
                                 : qmath::dequant_sym(f[i], g.scale, packed::sym_offset(3, false));
      EXPECT_EQ(x_hat, 0.0f);
    }
    // Both arms are exact on zeros: a tie, which goes to asymmetric.
    if (mode == qmath::GroupMode::hybrid) {
      EXPECT_TRUE(g.asym);
    }
  }
}

TEST(Quantizer, TernaryLevelsForTwoBitSignMagnitude) {
  // 2-bit sign-magnitude is {-s, 0, +s} with s = max|x|.
  std::vector<float> x = {1.0f, -1.0f, 0.4f, 0.6f, -0.6f, 0.0f, 0.2f, -0.2f, 1.0f, 0.9f, 0.5f, 0.45f, -0.3f, 0.1f, 0.7f, -0.8f};
  std::uint8_t f[16];
  qmath::GroupParams p;
  p.mode = qmath::GroupMode::sym;
  p.bits = 2;
  const auto g = qmath::quantize_group(x.data(), 1, 16, p, f);
  EXPECT_EQ(g.scale, 1.0f);
  const float expected[16] = {1, -1, 0, 1, -1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, -1};  // 0.5 rounds to 0 (half to even)
  for (int i = 0; i < 16; ++i) EXPECT_EQ(qmath::dequant_sym(f[i], g.scale, 1), expected[i]) << i;
}

TEST(PackedLayout, PutGetRoundTripAndDocumentedBits) {
  std::mt19937 rng(7);
  for (int bits : {2, 3, 4, 8}) {
    std::vector<std::uint32_t> chunk(static_cast<std::size_t>(bits), 0u);
    std::vector<int> codes(32);
    for (int i = 0; i < 32; ++i) {
      codes[i] = static_cast<int>(rng() % (1u << bits));
      packed::put_code(chunk.data(), bits, i, static_cast<std::uint32_t>(codes[i]));
    }
    for (int i = 0; i < 32; ++i) {
      EXPECT_EQ(static_cast<int>(packed::get_code(chunk.data(), bits, i)), codes[i]);
      EXPECT_EQ(test::doc_code(chunk.data(), bits, i), codes[i]);
    }
  }
  // 3-bit: code 17 = 0b101 (half 1, whole) sits at bits 5..7 of byte 2 of word 0.
  std::uint32_t chunk[3] = {0, 0, 0};
  packed::put_code(chunk, 3, 17, 5);
  EXPECT_EQ(chunk[0], 5u << 21);
  EXPECT_EQ(chunk[1], 0u);
  EXPECT_EQ(chunk[2], 0u);
  // Code 14 = 0b110 (half 0, split): 0b10 at bits 0..1 of word 1, its bit 2 at bit 1 of word 2; code
  // 29 = 0b101 (half 1, split): 0b01 at bits 24..25 of word 0, its bit 2 at bit 24 of word 2.
  std::uint32_t split[3] = {0, 0, 0};
  packed::put_code(split, 3, 14, 6);
  packed::put_code(split, 3, 29, 5);
  EXPECT_EQ(split[0], 1u << 24);
  EXPECT_EQ(split[1], 2u);
  EXPECT_EQ(split[2], (1u << 1) | (1u << 24));
  // 2-bit: least-significant first, code 1 = 0b11 at bits 2..3 of word 0.
  std::uint32_t two[2] = {0, 0};
  packed::put_code(two, 2, 1, 3);
  EXPECT_EQ(two[0], 0xcu);
}

}  // namespace
}  // namespace kvq
