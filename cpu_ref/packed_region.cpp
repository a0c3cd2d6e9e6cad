#include "cpu_ref/packed_region.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/codebook.h"
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
  if (spec.mode == Mode::codebook) {
    if (spec.group_axis != GroupAxis::channel) fail("internal: codebook codes need the channel-axis layout");
    levels_ = lloyd_max(spec.bits).levels;
    thresholds_ = lloyd_max(spec.bits).thresholds;
  }
}

int PackedRegion::zero_block_tokens() const {
  return spec_.group_axis == GroupAxis::channel ? packed::kTileTokens : spec_.group_size;
}

[[gnu::always_inline]] inline PackedRegion::GroupMeta PackedRegion::group_meta(std::size_t group, std::size_t& zero_cursor) const {
  GroupMeta m;
  m.scale = scales_.magnitude(group);
  m.asym = spec_.mode == Mode::asym || (spec_.mode == Mode::hybrid && scales_.sign_bit(group));
  m.zero = m.asym ? zeros_.value(spec_.mode == Mode::asym ? group : zero_cursor++) : 0.0f;
  m.zero_eff = m.asym ? m.zero : -static_cast<float>(offset_) * m.scale;
  return m;
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
  if (spec_.group_axis == GroupAxis::token && count % G != 0) {
    fail("internal: token-axis append of {} tokens, not a multiple of {}", count, G);
  }
  // Codes are written in parallel into disjoint, pre-zeroed words (rows for the channel axis,
  // channels for the token axis); metadata is then stored serially in group order, so the
  // result is the same whatever the number of threads.
  const std::size_t groups = static_cast<std::size_t>(count) * d_ / G;
  std::vector<qmath::GroupQuant> meta(groups);
  if (spec_.group_axis == GroupAxis::channel) {
    const std::size_t row_words = static_cast<std::size_t>(chunks_per_row) * b;
    const std::size_t base = codes_.size();
    codes_.resize(base + static_cast<std::size_t>(count) * row_words, 0u);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < count; ++r) {
      std::uint8_t fields[128];
      const float* x = rows + static_cast<std::size_t>(r) * d_;
      std::uint32_t* row = &codes_[base + static_cast<std::size_t>(r) * row_words];
      if (codebook()) {
        const int n = static_cast<int>(thresholds_.size());
        for (int c = 0; c < d_; ++c)
          packed::put_code(row + static_cast<std::size_t>(c / 32) * b, b, c % 32, codebook_code(x[c], thresholds_.data(), n));
        continue;
      }
      for (int g0 = 0; g0 < d_; g0 += G) {
        meta[static_cast<std::size_t>(r) * (d_ / G) + g0 / G] = qmath::quantize_group(x + g0, 1, G, params_, fields);
        for (int i = 0; i < G; ++i) {
          const int c = g0 + i;
          packed::put_code(row + static_cast<std::size_t>(c / 32) * b, b, c % 32, fields[i]);
        }
      }
    }
    for (int r = 0; r < count && !codebook(); ++r) {
      if (spec_.mode == Mode::hybrid && (tokens_ + r) % packed::kTileTokens == 0) {
        zero_base_.push_back(static_cast<std::uint32_t>(zeros_.size()));
      }
      for (int g = 0; g < d_ / G; ++g) store_group(meta[static_cast<std::size_t>(r) * (d_ / G) + g]);
    }
  } else {
    // Allocate whole tiles as the blocks reach them.
    const std::size_t tiles = static_cast<std::size_t>((tokens_ + count + packed::kTileTokens - 1) / packed::kTileTokens);
    codes_.resize(std::max(codes_.size(), tiles * d_ * b), 0u);
    for (int r0 = 0; r0 < count; r0 += G) {  // blocks in order: two blocks of 16 share a tile's words
      const int t0 = tokens_ + r0;
      const float* x = rows + static_cast<std::size_t>(r0) * d_;
#pragma omp parallel for schedule(static)
      for (int c = 0; c < d_; ++c) {
        std::uint8_t fields[128];
        meta[static_cast<std::size_t>(r0 / G) * d_ + c] = qmath::quantize_group(x + c, d_, G, params_, fields);
        for (int i = 0; i < G; ++i) {
          const int t = t0 + i;
          const std::size_t chunk = (static_cast<std::size_t>(t / packed::kTileTokens) * d_ + c) * b;
          packed::put_code(&codes_[chunk], b, t % packed::kTileTokens, fields[i]);
        }
      }
    }
    for (std::size_t g = 0; g < groups; ++g) {
      if (spec_.mode == Mode::hybrid && g % static_cast<std::size_t>(d_) == 0) {
        zero_base_.push_back(static_cast<std::uint32_t>(zeros_.size()));
      }
      store_group(meta[g]);
    }
  }
  tokens_ += count;
}

std::size_t PackedRegion::zero_cursor_at(int t0) const {
  if (spec_.mode != Mode::hybrid || t0 >= tokens_) return 0;
  return zero_base_[static_cast<std::size_t>(t0 / zero_block_tokens())];
}

namespace {
// Sum of a group's byte-table entries; Bytes known at compile time unrolls into independent loads.
template <int Bytes>
inline float table_sum(const float* table, const int* order, const std::uint8_t* bytes) {
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int j = 0; j < Bytes; ++j) acc[j & 3] += table[order[j] * 256 + bytes[order[j]]];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}
inline float table_sum(int n, const float* table, const int* order, const std::uint8_t* bytes) {
  switch (n) {
    case 4: return table_sum<4>(table, order, bytes);
    case 6: return table_sum<6>(table, order, bytes);
    case 8: return table_sum<8>(table, order, bytes);
    case 12: return table_sum<12>(table, order, bytes);
    case 16: return table_sum<16>(table, order, bytes);
    case 24: return table_sum<24>(table, order, bytes);
    case 32: return table_sum<32>(table, order, bytes);
    default: break;
  }
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int j = 0; j < n; ++j) acc[j & 3] += table[order[j] * 256 + bytes[order[j]]];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}
}  // namespace

PackedRegion::DotPlan PackedRegion::plan_dot(const float* w) const {
  DotPlan plan;
  plan.weights.assign(w, w + d_);
  if (spec_.group_axis != GroupAxis::channel || codebook()) return plan;
  const int G = spec_.group_size, b = spec_.bits;
  const int groups_per_row = d_ / G;
  plan.group_sum.assign(static_cast<std::size_t>(groups_per_row), 0.0f);
  for (int g = 0; g < groups_per_row; ++g)
    for (int i = 0; i < G; ++i) plan.group_sum[g] += w[g * G + i];
  // Byte j of a row: the fields of the codes that have bits in it (core/packed.h: for b in {2, 4, 8}
  // 8/b whole codes; for b = 3 whole codes and parts of split ones, all of one 16-code half), each
  // with its weight in the code (4 for a split 3-bit code's bit 2). So every byte lies in one group.
  const int chunk_bytes = 4 * b;
  const int row_bytes = d_ / 32 * chunk_bytes;
  plan.byte_table.assign(static_cast<std::size_t>(row_bytes) * 256, 0.0f);
  std::vector<std::vector<int>> by_group(static_cast<std::size_t>(groups_per_row));
  // The fields depend only on the byte's place in its chunk: found once per place, not per chunk.
  struct Field {
    int code, low, width, weight;
  };
  std::vector<std::vector<Field>> fields_at(static_cast<std::size_t>(chunk_bytes));
  const std::uint32_t all_ones = (1u << b) - 1u;
  for (int i = 0; i < 32; ++i) {
    const packed::CodePlacement at = packed::place_code(b, i, all_ones);
    for (int part = 0; part < at.count; ++part)
      for (int k = 0; k < 4; ++k) {
        const std::uint32_t in_byte = (at.bits[part] >> (8 * k)) & 0xffu;
        if (in_byte != 0) fields_at[static_cast<std::size_t>(4 * at.word[part] + k)].push_back({i, __builtin_ctz(in_byte), __builtin_popcount(in_byte), part == 1 ? 4 : 1});
      }
  }
  for (int j = 0; j < row_bytes; ++j) {
    const int chunk = j / chunk_bytes;
    const std::vector<Field>& fields = fields_at[static_cast<std::size_t>(j % chunk_bytes)];
    const float* wc = w + chunk * 32;
    float* table = &plan.byte_table[static_cast<std::size_t>(j) * 256];
    for (int v = 0; v < 256; ++v) {
      float sum = 0.0f;
      for (const Field& f : fields) sum += wc[f.code] * static_cast<float>(((v >> f.low) & ((1 << f.width) - 1)) * f.weight);
      table[v] = sum;
    }
    by_group[static_cast<std::size_t>((chunk * 32 + fields.front().code) / G)].push_back(j);
  }
  for (const auto& bytes : by_group) plan.group_bytes.insert(plan.group_bytes.end(), bytes.begin(), bytes.end());
  return plan;
}

void PackedRegion::dot_rows(const DotPlan& plan, int t0, int t1, float* out) const {
  const int G = spec_.group_size;
  const int b = spec_.bits;
  const float* w = plan.weights.data();
  std::size_t zc = zero_cursor_at(t0);
  if (codebook()) {
    const std::size_t row_words = static_cast<std::size_t>(d_ / 32) * b;
    float decoded[32];
    for (int t = t0; t < t1; ++t) {
      float score = 0.0f;
      for (int j = 0; j < d_ / 32; ++j) {
        decode_chunk(&codes_[static_cast<std::size_t>(t) * row_words + static_cast<std::size_t>(j) * b], b, decoded);
        for (int i = 0; i < 32; ++i) score += w[j * 32 + i] * levels_[static_cast<std::size_t>(decoded[i])];
      }
      out[t - t0] = score;
    }
    return;
  }
  if (spec_.group_axis == GroupAxis::channel) {
    const int groups_per_row = d_ / G;
    const std::size_t row_words = static_cast<std::size_t>(d_ / 32) * b;
    const int group_bytes = G * b / 8;  // 4 .. 128 (6 for 3-bit groups of 16)
    const float* table = plan.byte_table.data();
    for (int t = t0; t < t1; ++t) {
      const auto* bytes = reinterpret_cast<const std::uint8_t*>(&codes_[static_cast<std::size_t>(t) * row_words]);
      const int* order = plan.group_bytes.data();
      float score = 0.0f;
      for (int g = 0; g < groups_per_row; ++g, order += group_bytes) {
        const float dot = table_sum(group_bytes, table, order, bytes);
        const GroupMeta m = group_meta(static_cast<std::size_t>(t) * groups_per_row + g, zc);
        score += m.scale * dot + m.zero_eff * plan.group_sum[g];
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
      for (int c0 = 0; c0 < d_; c0 += 8) {
        float dot[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int t = blk0; t < blk0 + n; t += span) {
          chunk_dot8(&codes_[(static_cast<std::size_t>(t / 32) * d_ + c0) * b], b, t % 32, span, p + (t - t0), dot);
        }
        for (int k = 0; k < 8; ++k) {
          const GroupMeta m = group_meta(static_cast<std::size_t>(blk0 / G) * d_ + c0 + k, zc);
          out[c0 + k] += m.scale * dot[k] + m.zero_eff * psum;
        }
      }
    }
    return;
  }
  // Channel axis: every token's groups have their own scale; fold p[t] into it.
  const int groups_per_row = d_ / G;
  const int span = std::min(G, 32);
  const std::size_t row_words = static_cast<std::size_t>(d_ / 32) * b;
  if (codebook()) {
    float decoded[32];
    for (int t = t0; t < t1; ++t)
      for (int j = 0; j < d_ / 32; ++j) {
        decode_chunk(&codes_[static_cast<std::size_t>(t) * row_words + static_cast<std::size_t>(j) * b], b, decoded);
        for (int i = 0; i < 32; ++i) out[j * 32 + i] += p[t - t0] * levels_[static_cast<std::size_t>(decoded[i])];
      }
    return;
  }
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
  if (codebook()) {
    const std::size_t row_words = static_cast<std::size_t>(d_ / 32) * b;
    for (int t = 0; t < tokens_; ++t)
      for (int c = 0; c < d_; ++c)
        out[static_cast<std::size_t>(t) * d_ + c] =
            levels_[packed::get_code(&codes_[t * row_words + static_cast<std::size_t>(c / 32) * b], b, c % 32)];
    return;
  }
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
