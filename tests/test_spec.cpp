// The spec: presets as ALGORITHMS.md tabulates them, key parsing and validation errors.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/error.h"
#include "core/spec.h"

namespace kvq {
namespace {

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// One row of ALGORITHMS.md's table "Configurations the InnerQ scripts evaluate" (group 32 everywhere).
struct Row {
  const char* name;
  Mode k_mode;
  int k_bits;
  GroupAxis k_axis;
  Mode v_mode;
  int v_bits;
  GroupAxis v_axis;
  int recent, sink, k_flush, v_flush;
  bool key_norm;
};

TEST(Presets, MatchTheInnerQScriptTable) {
  const auto C = GroupAxis::channel, T = GroupAxis::token;
  const Row rows[] = {
      {"kivi", Mode::asym, 2, T, Mode::asym, 2, C, 128, 0, 32, 1, false},
      {"kivi_sink", Mode::asym, 2, T, Mode::asym, 2, C, 96, 32, 32, 1, false},
      {"innerq_base", Mode::sym, 3, C, Mode::sym, 3, T, 96, 32, 1, 32, true},
      {"innerq_small", Mode::sym, 3, C, Mode::sym, 2, T, 96, 32, 1, 32, true},
      {"innerq_hybrid", Mode::sym, 3, C, Mode::hybrid, 2, T, 96, 32, 1, 32, true},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    const CacheSpec s = preset(r.name);
    EXPECT_EQ(s.k.mode, r.k_mode);
    EXPECT_EQ(s.k.bits, r.k_bits);
    EXPECT_EQ(s.k.group_axis, r.k_axis);
    EXPECT_EQ(s.v.mode, r.v_mode);
    EXPECT_EQ(s.v.bits, r.v_bits);
    EXPECT_EQ(s.v.group_axis, r.v_axis);
    EXPECT_EQ(s.k.group_size, 32);
    EXPECT_EQ(s.v.group_size, 32);
    EXPECT_EQ(s.recent, r.recent);
    EXPECT_EQ(s.sink, r.sink);
    EXPECT_EQ(s.k.flush, r.k_flush);
    EXPECT_EQ(s.v.flush, r.v_flush);
    EXPECT_EQ(s.key_norm, r.key_norm);
    // Python-reference conventions: sign-magnitude levels, hybrid's asymmetric arm at b-1 bits, fp16 metadata.
    EXPECT_EQ(s.k.sym_levels, SymLevels::signmag);
    EXPECT_EQ(s.v.hybrid_asym_bits, HybridAsymBits::b_minus_1);
    EXPECT_EQ(s.k.meta, MetaPrecision::fp16);
    EXPECT_NO_THROW(s.validate(64));
    EXPECT_EQ(label(s), r.name);
  }
  EXPECT_EQ(preset("fp16").k.mode, Mode::fp16);
  EXPECT_EQ(preset("none").v.mode, Mode::none);
  // llama.cpp types: blocks of 32 along head_dim per token, no windows.
  EXPECT_EQ(preset("q8_0").k.bits, 8);
  EXPECT_EQ(preset("q4_1").v.mode, Mode::asym);
  EXPECT_EQ(preset("q4_0").k.sym_levels, SymLevels::twos);
  for (const auto& name : preset_names()) {
    EXPECT_NO_THROW(preset(name).validate(64)) << name;
    EXPECT_FALSE(preset_source(name).empty()) << name;
  }
}

// The rotation family as issue 7 and ALGORITHMS.md ("OScaR", "Other peers") describe it.
TEST(Presets, RotationFamilyMatchesItsDescription) {
  const auto C = GroupAxis::channel, T = GroupAxis::token;
  const CacheSpec oscar = preset("oscar");
  EXPECT_EQ(oscar.k.rotation, Rotation::hadamard);
  EXPECT_EQ(oscar.k.token_scale, TokenScale::omni);
  EXPECT_EQ(oscar.k.mode, Mode::asym);
  EXPECT_EQ(oscar.k.bits, 2);
  EXPECT_EQ(oscar.k.group_axis, T);  // per channel: groups of 32 tokens
  EXPECT_EQ(oscar.v.mode, Mode::asym);
  EXPECT_EQ(oscar.v.bits, 2);
  EXPECT_EQ(oscar.v.group_axis, C);  // per token
  EXPECT_EQ(oscar.v.rotation, Rotation::none);
  EXPECT_EQ(oscar.k.group_size, 32);
  EXPECT_EQ(oscar.v.group_size, 32);
  EXPECT_EQ(oscar.recent, 128);
  EXPECT_EQ(oscar.sink, 0);
  // The rotation alone, on top of an unchanged baseline.
  for (const auto& [name, base] : {std::pair{"kivi_hadamard", "kivi"}, std::pair{"innerq_hadamard", "innerq_hybrid"}}) {
    CacheSpec s = preset(name);
    EXPECT_EQ(s.k.rotation, Rotation::hadamard) << name;
    EXPECT_EQ(s.k.token_scale, TokenScale::none) << name;
    s.k.rotation = Rotation::none;
    s.preset = base;
    EXPECT_EQ(describe(s), describe(preset(base))) << name;
  }
  const CacheSpec turbo = preset("turbo3");
  for (const TensorSpec& t : {turbo.k, turbo.v}) {
    EXPECT_EQ(t.rotation, Rotation::random);
    EXPECT_EQ(t.mode, Mode::codebook);
    EXPECT_EQ(t.bits, 3);
    EXPECT_EQ(t.token_scale, TokenScale::head);
  }
  EXPECT_EQ(turbo.sink + turbo.recent, 0);
  // Storage: 3-bit codes plus one fp32 scale per token of head_dim 128: 3 + 32/128 bits per value.
  StorageCounts counts;
  counts.quantized_tokens = 1024;
  counts.scaled_tokens = 1024;
  EXPECT_DOUBLE_EQ(8.0 * storage_bytes(turbo.k, 128, counts) / (1024.0 * 128), 3.25);
}

TEST(Spec, EffectiveStorageOfThePaper) {
  // 3-bit sym keys 3.5 bits/element, 2-bit sym values 2.5, KIVI 2-bit asym 3.0 (ALGORITHMS.md).
  StorageCounts n;
  n.quantized_tokens = 32 * 1024;
  auto bits = [&](const TensorSpec& t) { return 8.0 * storage_bytes(t, 128, n) / (n.quantized_tokens * 128.0); };
  EXPECT_DOUBLE_EQ(bits(preset("innerq_small").k), 3.5);
  EXPECT_DOUBLE_EQ(bits(preset("innerq_small").v), 2.5);
  EXPECT_DOUBLE_EQ(bits(preset("kivi").k), 3.0);
  EXPECT_DOUBLE_EQ(bits(preset("kivi").v), 3.0);
}

TEST(Spec, FieldsRoundTripAndAliases) {
  CacheSpec s = preset("innerq_hybrid");
  set_field(s, "k.group_axis", "outer");
  EXPECT_EQ(s.k.group_axis, GroupAxis::token);
  set_field(s, "v.group_axis", "outer");
  EXPECT_EQ(s.v.group_axis, GroupAxis::channel);
  set_field(s, "v.group_axis", "inner");
  EXPECT_EQ(s.v.group_axis, GroupAxis::token);
  set_field(s, "bits", "4");
  EXPECT_EQ(s.k.bits, 4);
  EXPECT_EQ(s.v.bits, 4);
  EXPECT_EQ(label(s), "innerq_hybrid+");
  CacheSpec copy = preset("none");
  for (const auto& [key, value] : spec_fields(s)) set_field(copy, key, value);
  EXPECT_EQ(describe(copy), describe(s));
}

TEST(Spec, RotationFamilyValuesAreValidated) {
  CacheSpec s = preset("turbo3");
  s.k.token_scale = TokenScale::none;
  expect_error([&] { s.validate(64); }, "k.token_scale: codebook mode needs head or omni");
  s = preset("turbo3");
  s.v.bits = 8;
  expect_error([&] { s.validate(64); }, "v.bits: got 8, expected 2, 3 or 4 for codebook mode");
  s = preset("turbo3");
  s.k.group_axis = GroupAxis::token;
  s.k.flush = 32;
  expect_error([&] { s.validate(64); }, "k.group_axis: codebook codes are stored per token");
  s = preset("oscar");
  expect_error([&] { s.validate(96); }, "k.rotation: hadamard needs head_dim a power of two, got 96");
  expect_error([&] { set_field(s, "k.rotation", "haddamard"); }, "k.rotation: got 'haddamard', expected one of none, hadamard, random");
  expect_error([&] { set_field(s, "v.token_scale", "all"); }, "expected one of none, head, omni");
  set_field(s, "rotation_seed", "12");
  EXPECT_EQ(s.rotation_seed, 12);
  EXPECT_EQ(label(s), "oscar+");
}

TEST(Spec, InvalidValuesAreRejectedWithTheReason) {
  CacheSpec s = preset("innerq_hybrid");
  expect_error([&] { set_field(s, "k.bitz", "3"); }, "did you mean 'k.bits'");
  expect_error([&] { set_field(s, "k.bits", "three"); }, "k.bits: got 'three', expected an integer");
  expect_error([&] { set_field(s, "v.mode", "hybird"); }, "v.mode: got 'hybird', expected one of");
  expect_error([&] { preset("innerq"); }, "preset: unknown 'innerq'");
  CacheSpec bad = preset("innerq_hybrid");
  bad.k.bits = 5;
  expect_error([&] { bad.validate(); }, "k.bits: got 5");
  bad = preset("innerq_hybrid");
  bad.v.flush = 16;
  expect_error([&] { bad.validate(); }, "v.flush: got 16, expected a multiple of v.group_size");
  bad = preset("innerq_hybrid");
  bad.k.group_size = 128;
  expect_error([&] { bad.validate(64); }, "does not divide head_dim 64");
  bad = preset("kivi");
  bad.k.group_size = 24;
  expect_error([&] { bad.validate(); }, "k.group_size: got 24");
  bad = preset("kivi");
  bad.recent = -1;
  expect_error([&] { bad.validate(); }, "recent: got -1");
}

}  // namespace
}  // namespace kvq

#include "core/half.h"

namespace kvq {
namespace {

// The hardware (F16C) and library (Eigen) fp16 paths must agree bit for bit, NaN payloads aside.
TEST(Half, ConversionMatchesEigenOnEveryHalfAndOnTies) {
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float eigen = static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(h));
    if (eigen != eigen) continue;
    ASSERT_EQ(half_bits_to_float(h), eigen) << bits;
    ASSERT_EQ(float_to_half_bits(eigen), Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(eigen))) << bits;
  }
  std::mt19937 rng(3);
  for (int i = 0; i < 100000; ++i) {
    std::uint32_t u = rng();
    float x;
    std::memcpy(&x, &u, 4);
    if (x != x) continue;
    ASSERT_EQ(float_to_half_bits(x), Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(x))) << x;
  }
  EXPECT_EQ(float_to_half_bits(1.0f + 1.0f / 2048), 0x3c00);  // tie to even: down
  EXPECT_EQ(float_to_half_bits(1.0f + 3.0f / 2048), 0x3c02);  // tie to even: up
}

}  // namespace
}  // namespace kvq
