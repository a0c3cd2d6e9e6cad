#pragma once
// The quantized region of one (layer, kv head) tensor, stored exactly in the
// core/packed.h layout: codes, scales (mode bit in the sign for hybrid), zero
// points and hybrid's zero_base (codebook mode: codes only). Products are computed from the codes directly.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/half.h"
#include "core/packed.h"
#include "core/quant_math.h"
#include "core/spec.h"

namespace kvq::cpu {

// Scales or zero points in the stored precision (fp16 bit patterns or fp32 values).
class MetaArray {
 public:
  explicit MetaArray(bool fp16 = true) : fp16_(fp16) {}
  // Appends a value already rounded to the stored precision; sign_bit forces the sign bit on.
  void push(float value, bool sign_bit = false);
  // Inline: read once per group on the hot path.
  float magnitude(std::size_t i) const {  // |value|
    if (fp16_) return half_bits_to_float(static_cast<std::uint16_t>(half_[i] & 0x7fffu));
    const std::uint32_t bits = single_[i] & 0x7fffffffu;
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
  bool sign_bit(std::size_t i) const {
    return fp16_ ? (half_[i] & packed::kHalfSignBit) != 0 : (single_[i] & packed::kFloatSignBit) != 0;
  }
  float value(std::size_t i) const { return sign_bit(i) ? -magnitude(i) : magnitude(i); }
  std::size_t size() const { return fp16_ ? half_.size() : single_.size(); }
  std::size_t bytes() const { return fp16_ ? half_.size() * 2 : single_.size() * 4; }
  bool fp16() const { return fp16_; }
  const std::vector<std::uint16_t>& half_bits() const { return half_; }
  const std::vector<std::uint32_t>& float_bits() const { return single_; }

 private:
  bool fp16_;
  std::vector<std::uint16_t> half_;
  std::vector<std::uint32_t> single_;
};

class PackedRegion {
 public:
  // Tokens that a range passed to dot_rows/weighted_sum must start at a multiple of
  // (tiles, groups of up to 128 tokens and zero-blocks all align to it).
  static constexpr int kRangeAlign = 128;

  PackedRegion(const TensorSpec& spec, int head_dim);

  // Quantizes `count` rows (row-major, count x head_dim) and appends them. For token-axis
  // groups count must be a multiple of group_size. Throws kvq::Error when a scale or zero
  // point does not fit the metadata precision.
  void append(const float* rows, int count);

  int tokens() const { return tokens_; }
  int head_dim() const { return d_; }
  const TensorSpec& spec() const { return spec_; }

  // What dot_rows needs for one weight vector, prepared once and shared by every range:
  // for channel-axis groups, a table giving, for each byte of a token's codes and each of its
  // 256 values, that byte's share of sum_c w[c] * f[c].
  struct DotPlan {
    std::vector<float> weights;    // w, head_dim
    std::vector<float> group_sum;  // channel axis: sum of w over each group of a row
    std::vector<float> byte_table; // channel axis: row_bytes x 256
    std::vector<int> group_bytes;  // channel axis: the bytes of a row ordered by group, group_size*b/8 each
  };
  DotPlan plan_dot(const float* w) const;

  // out[t - t0] = sum_c w[c] * x^[t][c] for t in [t0, t1); t0 a multiple of kRangeAlign and
  // t1 a multiple of the token-axis group size or tokens().
  void dot_rows(const DotPlan& plan, int t0, int t1, float* out) const;
  // out[c] = sum_{t in [t0, t1)} p[t - t0] * x^[t][c]; t0 a multiple of kRangeAlign.
  void weighted_sum(const float* p, int t0, int t1, float* out) const;
  // out (tokens x head_dim) = x^, by the definitional forms of core/quant_math.h.
  void dequantize(float* out) const;

  // Bytes held: codes, scales, zero points, zero_base.
  std::size_t bytes() const;

  const std::vector<std::uint32_t>& codes() const { return codes_; }
  const MetaArray& scales() const { return scales_; }
  const MetaArray& zeros() const { return zeros_; }
  const std::vector<std::uint32_t>& zero_base() const { return zero_base_; }

 private:
  struct GroupMeta {
    bool asym;
    float scale;     // |s|
    float zero;      // z (asymmetric groups)
    float zero_eff;  // z for asymmetric groups, -offset * s for symmetric ones: x^ = f * scale + zero_eff
  };
  // Metadata of the group with index `group`; zero_cursor walks hybrid's compact zero points
  // and must be visited in group order.
  GroupMeta group_meta(std::size_t group, std::size_t& zero_cursor) const;
  std::size_t zero_cursor_at(int t0) const;
  void store_group(const qmath::GroupQuant& g);
  int zero_block_tokens() const;

  TensorSpec spec_;
  qmath::GroupParams params_;
  int d_;
  int tokens_ = 0;
  int offset_;  // symmetric level offset
  // mode codebook: x^ = levels_[f], codes from thresholds_ (core/codebook.h); empty otherwise.
  std::vector<float> levels_;
  std::vector<float> thresholds_;
  bool codebook() const { return !levels_.empty(); }
  std::vector<std::uint32_t> codes_;
  MetaArray scales_;
  MetaArray zeros_;
  std::vector<std::uint32_t> zero_base_;
};

}  // namespace kvq::cpu
