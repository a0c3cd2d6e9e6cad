#include "cpu_ref/packed_region.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "core/packed.h"
#include "cpu_ref/codes.h"

namespace kvq::cpu {

void MetaArray::push(float value, bool sign_bit) {
  if (fp16_) {
    std::uint16_t bits = float_to_half_bits(value);
    if (sign_bit) bits |= packed::kHalfSignBit;
    half_.push_back(bits);
  } else {
    std::uint32_t bits;
    std::memcpy(&bits, &value, 4);
    if (sign_bit) bits |= packed::kFloatSignBit;
    single_.push_back(bits);
  }
}

float MetaArray::magnitude(std::size_t i) const {
  if (fp16_) return half_bits_to_float(static_cast<std::uint16_t>(half_[i] & 0x7fffu));
  const std::uint32_t bits = single_[i] & 0x7fffffffu;
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

float MetaArray::value(std::size_t i) const { return sign_bit(i) ? -magnitude(i) : magnitude(i); }

bool MetaArray::sign_bit(std::size_t i) const {
  return fp16_ ? (half_[i] & packed::kHalfSignBit) != 0 : (single_[i] & packed::kFloatSignBit) != 0;
}

PackedRegion::PackedRegion(const TensorSpec& spec, int head_dim)
    : spec_(spec),
      d_(head_dim),
      offset_(packed::sym_offset(spec.bits, spec.sym_levels == SymLevels::twos)),
      scales_(spec.meta == MetaPrecision::fp16),
      zeros_(spec.meta == MetaPrecision::fp16) {
  params_.mode = spec.mode == Mode::asym ? qmath::GroupMode::asym
                 : spec.mode == Mode::hybrid ? qmath::GroupMode::hybrid
                                             : qmath::GroupMode::sym;
  params_.bits = spec.bits;
  params_.twos = spec.sym_levels == SymLevels::twos;
  params_.hybrid_asym_bits = spec.hybrid_asym_bits == HybridAsymBits::b ? spec.bits : spec.bits - 1;
  params_.meta_fp16 = spec.meta == MetaPrecision::fp16;
}

int PackedRegion::zero_block_tokens() const {
  return spec_.group_axis == GroupAxis::channel ? packed::kTileTokens : spec_.group_size;
}

void PackedRegion::store_group(const qmath::GroupQuant& g) {
  if (!std::isfinite(g.scale) || !std::isfinite(g.zero)) {
    fail("metadata overflow: a group's scale or zero point does not fit {} (set k.meta/v.meta to fp32)",
         to_string(spec_.meta));
  }
  const bool hybrid = spec_.mode == Mode::hybrid;
  scales_.push(g.scale, hybrid && g.asym);
  if (g.asym) zeros_.push(g.zero);
}

void PackedRegion::append(const float* rows, int count) {
  const int G = spec_.group_size;
  const int b = spec_.bits;
  const int chunks_per_row = d_ / packed::kChunkCodes;
  std::uint8_t fields[128];
  if (spec_.group_axis == GroupAxis::channel) {
    for (int r = 0; r < count; ++r) {
      const int t = tokens_ + r;
      if (spec_.mode == Mode::hybrid && t % packed::kTileTokens == 0) {
        zero_base_.push_back(static_cast<std::uint32_t>(zeros_.size()));
      }
      const std::size_t base = codes_.size();
      codes_.resize(base + static_cast<std::size_t>(chunks_per_row) * b, 0u);
      const float* x = rows + static_cast<std::size_t>(r) * d_;
      for (int g0 = 0; g0 < d_; g0 += G) {
        store_group(qmath::quantize_group(x + g0, 1, G, params_, fields));
        for (int i = 0; i < G; ++i) {
          const int c = g0 + i;
          packed::put_code(&codes_[base + static_cast<std::size_t>(c / 32) * b], b, c % 32, fields[i]);
        }
      }
    }
  } else {
    if (count % G != 0) fail("internal: token-axis append of {} tokens, not a multiple of {}", count, G);
    for (int r0 = 0; r0 < count; r0 += G) {
      const int t0 = tokens_ + r0;
      if (spec_.mode == Mode::hybrid) zero_base_.push_back(static_cast<std::uint32_t>(zeros_.size()));
      // Allocate whole tiles as the block reaches them.
      const std::size_t tiles_needed = static_cast<std::size_t>((t0 + G + packed::kTileTokens - 1) / packed::kTileTokens);
      codes_.resize(std::max(codes_.size(), tiles_needed * d_ * b), 0u);
      const float* x = rows + static_cast<std::size_t>(r0) * d_;
      for (int c = 0; c < d_; ++c) {
        store_group(qmath::quantize_group(x + c, d_, G, params_, fields));
        for (int i = 0; i < G; ++i) {
          const int t = t0 + i;
          const std::size_t chunk = (static_cast<std::size_t>(t / packed::kTileTokens) * d_ + c) * b;
          packed::put_code(&codes_[chunk], b, t % packed::kTileTokens, fields[i]);
        }
      }
    }
  }
  tokens_ += count;
}

PackedRegion::GroupMeta PackedRegion::group_meta(std::size_t group, std::size_t& zero_cursor) const {
  GroupMeta m;
  m.scale = scales_.magnitude(group);
  m.asym = spec_.mode == Mode::asym || (spec_.mode == Mode::hybrid && scales_.sign_bit(group));
  m.zero = m.asym ? zeros_.value(spec_.mode == Mode::asym ? group : zero_cursor++) : 0.0f;
  m.zero_eff = m.asym ? m.zero : -static_cast<float>(offset_) * m.scale;
  return m;
}

std::size_t PackedRegion::zero_cursor_at(int t0) const {
  if (spec_.mode != Mode::hybrid || t0 >= tokens_) return 0;
  return zero_base_[static_cast<std::size_t>(t0 / zero_block_tokens())];
}

void PackedRegion::dot_rows(const float* w, int t0, int t1, float* out) const {
  const int G = spec_.group_size;
  const int b = spec_.bits;
  std::size_t zc = zero_cursor_at(t0);
  if (spec_.group_axis == GroupAxis::channel) {
    const int groups_per_row = d_ / G;
    // Per-group sums of the weights, for the zero-point term.
    std::vector<float> wsum(static_cast<std::size_t>(groups_per_row), 0.0f);
    for (int g = 0; g < groups_per_row; ++g)
      for (int i = 0; i < G; ++i) wsum[g] += w[g * G + i];
    const std::size_t row_words = static_cast<std::size_t>(d_ / 32) * b;
    for (int t = t0; t < t1; ++t) {
      const std::uint32_t* row = &codes_[static_cast<std::size_t>(t) * row_words];
      float score = 0.0f;
      for (int g = 0; g < groups_per_row; ++g) {
        float dot = 0.0f;
        for (int c = g * G; c < (g + 1) * G; c += std::min(G, 32)) {
          dot += chunk_dot(row + static_cast<std::size_t>(c / 32) * b, b, c % 32, std::min(G, 32), w + c);
        }
        const GroupMeta m = group_meta(static_cast<std::size_t>(t) * groups_per_row + g, zc);
        score += m.scale * dot + m.zero_eff * wsum[g];
      }
      out[t - t0] = score;
    }
    return;
  }
  // Token axis: each (block, channel) group has its own scale, so fold the scale into the weight.
  std::fill(out, out + (t1 - t0), 0.0f);
  float decoded[32];
  for (int blk0 = t0; blk0 < t1; blk0 += G) {
    const int blk1 = std::min(blk0 + G, t1);
    float zero_term = 0.0f;
    for (int c = 0; c < d_; ++c) {
      const GroupMeta m = group_meta(static_cast<std::size_t>(blk0 / G) * d_ + c, zc);
      const float ws = w[c] * m.scale;
      zero_term += w[c] * m.zero_eff;
      for (int t = blk0; t < blk1; t += 32) {
        decode_chunk(&codes_[(static_cast<std::size_t>(t / 32) * d_ + c) * b], b, decoded);
        const int n = std::min(32, blk1 - t);
        const int pos = t % 32;
        for (int i = 0; i < n; ++i) out[t - t0 + i] += ws * decoded[pos + i];
      }
    }
    for (int t = blk0; t < blk1; ++t) out[t - t0] += zero_term;
  }
}

void PackedRegion::weighted_sum(const float* p, int t0, int t1, float* out) const {
  const int G = spec_.group_size;
  const int b = spec_.bits;
  std::size_t zc = zero_cursor_at(t0);
  std::fill(out, out + d_, 0.0f);
  if (spec_.group_axis == GroupAxis::token) {
    const int span = std::min(G, 32);
    for (int blk0 = t0; blk0 < t1; blk0 += G) {
      const int n = std::min(G, t1 - blk0);
      float psum = 0.0f;
      for (int i = 0; i < n; ++i) psum += p[blk0 - t0 + i];
      for (int c = 0; c < d_; ++c) {
        float dot = 0.0f;
        for (int t = blk0; t < blk0 + n; t += span) {
          dot += chunk_dot(&codes_[(static_cast<std::size_t>(t / 32) * d_ + c) * b], b, t % 32, span, p + (t - t0));
        }
        const GroupMeta m = group_meta(static_cast<std::size_t>(blk0 / G) * d_ + c, zc);
        out[c] += m.scale * dot + m.zero_eff * psum;
      }
    }
    return;
  }
  // Channel axis: every token's groups have their own scale; fold p[t] into it.
  const int groups_per_row = d_ / G;
  const int span = std::min(G, 32);
  const std::size_t row_words = static_cast<std::size_t>(d_ / 32) * b;
  std::vector<float> zero_acc(static_cast<std::size_t>(groups_per_row), 0.0f);
  float decoded[32];
  for (int t = t0; t < t1; ++t) {
    const float pt = p[t - t0];
    const std::uint32_t* row = &codes_[static_cast<std::size_t>(t) * row_words];
    for (int g = 0; g < groups_per_row; ++g) {
      const GroupMeta m = group_meta(static_cast<std::size_t>(t) * groups_per_row + g, zc);
      zero_acc[g] += pt * m.zero_eff;
      const float ps = pt * m.scale;
      for (int c0 = g * G; c0 < (g + 1) * G; c0 += span) {
        decode_chunk(row + static_cast<std::size_t>(c0 / 32) * b, b, decoded);
        for (int i = 0; i < span; ++i) out[c0 + i] += ps * decoded[c0 % 32 + i];
      }
    }
  }
  for (int g = 0; g < groups_per_row; ++g)
    for (int i = 0; i < G; ++i) out[g * G + i] += zero_acc[g];
}

void PackedRegion::dequantize(float* out) const {
  const int G = spec_.group_size;
  const int b = spec_.bits;
  std::size_t zc = 0;
  auto value = [&](const GroupMeta& m, std::uint32_t f) {
    return m.asym ? qmath::dequant_asym(f, m.scale, m.zero) : qmath::dequant_sym(f, m.scale, offset_);
  };
  if (spec_.group_axis == GroupAxis::channel) {
    const std::size_t row_words = static_cast<std::size_t>(d_ / 32) * b;
    for (int t = 0; t < tokens_; ++t) {
      for (int g0 = 0; g0 < d_; g0 += G) {
        const GroupMeta m = group_meta(static_cast<std::size_t>(t) * (d_ / G) + g0 / G, zc);
        for (int c = g0; c < g0 + G; ++c) {
          const std::uint32_t f = packed::get_code(&codes_[t * row_words + static_cast<std::size_t>(c / 32) * b], b, c % 32);
          out[static_cast<std::size_t>(t) * d_ + c] = value(m, f);
        }
      }
    }
    return;
  }
  for (int blk0 = 0; blk0 < tokens_; blk0 += G) {
    for (int c = 0; c < d_; ++c) {
      const GroupMeta m = group_meta(static_cast<std::size_t>(blk0 / G) * d_ + c, zc);
      for (int t = blk0; t < blk0 + G; ++t) {
        const std::uint32_t f = packed::get_code(&codes_[(static_cast<std::size_t>(t / 32) * d_ + c) * b], b, t % 32);
        out[static_cast<std::size_t>(t) * d_ + c] = value(m, f);
      }
    }
  }
}

std::size_t PackedRegion::bytes() const {
  return codes_.size() * sizeof(std::uint32_t) + scales_.bytes() + zeros_.bytes() +
         zero_base_.size() * sizeof(std::uint32_t);
}

}  // namespace kvq::cpu
