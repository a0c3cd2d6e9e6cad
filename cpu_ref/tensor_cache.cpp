#include "cpu_ref/tensor_cache.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/half.h"

namespace kvq::cpu {

TensorCache::TensorCache(const TensorSpec& spec, int head_dim, int sink, int recent, bool key_norm,
                         std::uint64_t rotation_stream)
    : spec_(spec),
      d_(head_dim),
      sink_(sink),
      recent_(recent),
      key_norm_(key_norm),
      rotator_(spec.rotation, head_dim, rotation_stream) {
  if (spec_.quantized()) region_.emplace(spec_, d_);
}

TensorCache make_cache(const CacheSpec& spec, TensorKind kind, int head_dim) {
  const bool key = kind == TensorKind::key;
  TensorCache cache(key ? spec.k : spec.v, head_dim, spec.sink, spec.recent, key && spec.key_norm,
                    rotation_stream(spec.rotation_seed, kind));
  return cache;
}

std::vector<float> omni_token_scale(const std::vector<const float*>& heads, int count, int head_dim) {
  std::vector<float> out(static_cast<std::size_t>(count));
  for (int t = 0; t < count; ++t) {
    double sum = 0;
    for (const float* rows : heads)
      for (int c = 0; c < head_dim; ++c) {
        const double x = round_to_half(rows[static_cast<std::size_t>(t) * head_dim + c]);
        sum += x * x;
      }
    out[t] = static_cast<float>(std::sqrt(sum / (static_cast<double>(heads.size()) * head_dim)));
  }
  return out;
}

void TensorCache::push_window(std::vector<std::uint16_t>& window, const float* row) {
  for (int c = 0; c < d_; ++c) window.push_back(float_to_half_bits(row[c]));
}

std::vector<float> scale_and_rotate(const TensorSpec& spec, const Rotator& rotator, const float* rows, int count,
                                    int head_dim, const float* omni, std::vector<float>* scales) {
  const int d = head_dim;
  std::vector<float> out(rows, rows + static_cast<std::size_t>(count) * d);
  if (spec.token_scale != TokenScale::none) {
    if (spec.token_scale == TokenScale::omni && omni == nullptr && count > 0) {
      fail("internal: token_scale=omni needs the scales of all kv heads (omni_token_scale)");
    }
    for (int t = 0; t < count; ++t) {
      float* x = &out[static_cast<std::size_t>(t) * d];
      float sigma = 0.0f;
      if (spec.token_scale == TokenScale::omni) {
        sigma = omni[t];
      } else {
        double sum = 0;
        for (int c = 0; c < d; ++c) sum += static_cast<double>(x[c]) * x[c];
        sigma = static_cast<float>(std::sqrt(sum / d));
      }
      if (scales) scales->push_back(sigma);
      // A zero scale belongs to an all-zero row, which stays zero.
      if (sigma > 0.0f)
        for (int c = 0; c < d; ++c) x[c] /= sigma;
    }
  }
  if (!rotator.identity())
    for (int t = 0; t < count; ++t) rotator.forward(&out[static_cast<std::size_t>(t) * d]);
  return out;
}

std::vector<float> TensorCache::transformed(const float* rows, int count, const float* scales) {
  std::vector<float> out = scale_and_rotate(spec_, rotator_, rows, count, d_, scales, &token_scale_);
  if (!key_norm_ || count == 0) return out;
  if (norm_.empty()) {
    // Frozen on the first batch that gets stored past the windows (InnerQ); an all-zero channel keeps 1.
    norm_.assign(static_cast<std::size_t>(d_), 0.0f);
    for (int t = 0; t < count; ++t)
      for (int c = 0; c < d_; ++c) norm_[c] = std::max(norm_[c], std::fabs(out[static_cast<std::size_t>(t) * d_ + c]));
    for (int c = 0; c < d_; ++c) {
      float f = round_to_half(std::sqrt(norm_[c]));
      if (!(f > 0.0f) || !std::isfinite(f)) f = 1.0f;
      norm_[c] = f;
      norm_bits_.push_back(float_to_half_bits(f));
    }
  }
  for (int t = 0; t < count; ++t)
    for (int c = 0; c < d_; ++c) out[static_cast<std::size_t>(t) * d_ + c] /= norm_[c];
  return out;
}

void TensorCache::quantize_rows(const float* rows, int count, const float* scales) {
  if (count == 0) return;
  const std::vector<float> scaled = transformed(rows, count, scales);
  region_->append(scaled.data(), count);
}

void TensorCache::store_dense(const float* rows, int count, const float* scales) {
  const std::vector<float> scaled = transformed(rows, count, scales);
  if (spec_.mode == Mode::none) {
    dense32_.insert(dense32_.end(), scaled.begin(), scaled.end());
  } else {
    for (float x : scaled) dense16_.push_back(float_to_half_bits(x));
  }
  size_ += count;
}

void TensorCache::prefill(const float* rows, int count, const float* token_scale) {
  if (size_ != 0) fail("internal: prefill on a non-empty cache");
  const bool omni = spec_.token_scale == TokenScale::omni;
  if (omni && token_scale == nullptr && count > 0) fail("internal: token_scale=omni needs the omni token scales");
  if (!spec_.quantized()) {
    store_dense(rows, count, token_scale);
    return;
  }
  const int sink = std::min(sink_, count);
  for (int t = 0; t < sink; ++t) push_window(sink_rows_, rows + static_cast<std::size_t>(t) * d_);
  sink_count_ = sink;
  const int rest = count - sink;
  int quantize = 0;
  if (rest > recent_) {
    // Shrink the recent window until the quantized count is a multiple of F, never past 0.
    const int F = spec_.flush;
    quantize = std::min((rest - recent_ + F - 1) / F * F, rest / F * F);
  }
  // Quantized modes read each token as an fp16 cache holds it, in prefill as in decode flushes.
  std::vector<float> as_fp16(rows + static_cast<std::size_t>(sink) * d_,
                             rows + static_cast<std::size_t>(sink + quantize) * d_);
  for (float& x : as_fp16) x = round_to_half(x);
  quantize_rows(as_fp16.data(), quantize, omni ? token_scale + sink : nullptr);
  for (int t = sink + quantize; t < count; ++t) {
    push_window(recent_rows_, rows + static_cast<std::size_t>(t) * d_);
    if (omni) recent_scales_.push_back(token_scale[t]);
  }
  recent_count_ = count - sink - quantize;
  size_ = count;
}

void TensorCache::append(const float* row, float token_scale) {
  if (!spec_.quantized()) {
    store_dense(row, 1, &token_scale);
    return;
  }
  ++size_;
  if (sink_count_ < sink_) {
    push_window(sink_rows_, row);
    ++sink_count_;
    return;
  }
  push_window(recent_rows_, row);
  if (spec_.token_scale == TokenScale::omni) recent_scales_.push_back(token_scale);
  ++recent_count_;
  const int F = spec_.flush;
  if (recent_count_ >= recent_ + F) {
    const std::size_t n = static_cast<std::size_t>(F) * d_;
    std::vector<float> oldest(n);
    for (std::size_t i = 0; i < n; ++i) oldest[i] = half_bits_to_float(recent_rows_[i]);
    const bool omni = spec_.token_scale == TokenScale::omni;
    quantize_rows(oldest.data(), F, omni ? recent_scales_.data() : nullptr);
    if (omni) recent_scales_.erase(recent_scales_.begin(), recent_scales_.begin() + F);
    recent_rows_.erase(recent_rows_.begin(), recent_rows_.begin() + static_cast<std::ptrdiff_t>(n));
    recent_count_ -= F;
  }
}

void TensorCache::dot_rows(const float* q, float* out) const {
  auto dense = [&](const std::uint16_t* rows, int count, const float* w, float* o) {
    for (int t = 0; t < count; ++t) {
      float acc = 0.0f;
      for (int c = 0; c < d_; ++c) acc += w[c] * half_bits_to_float(rows[static_cast<std::size_t>(t) * d_ + c]);
      o[t] = acc;
    }
  };
  // The transform is folded into the query: (f * R q) . (R k / sigma / f) = q . k / sigma.
  std::vector<float> qn(q, q + d_);
  rotator_.forward(qn.data());
  if (!norm_.empty())
    for (int c = 0; c < d_; ++c) qn[c] *= norm_[c];
  auto rescale = [&](float* o, int count) {
    if (!token_scale_.empty())
      for (int t = 0; t < count; ++t) o[t] *= token_scale_[t];
  };
  if (spec_.mode == Mode::none) {
    for (int t = 0; t < size_; ++t) {
      float acc = 0.0f;
      for (int c = 0; c < d_; ++c) acc += qn[c] * dense32_[static_cast<std::size_t>(t) * d_ + c];
      out[t] = acc;
    }
    rescale(out, size_);
    return;
  }
  if (spec_.mode == Mode::fp16) {
    dense(dense16_.data(), size_, qn.data(), out);
    rescale(out, size_);
    return;
  }
  dense(sink_rows_.data(), sink_count_, q, out);
  const int nq = quantized_tokens();
  float* qout = out + sink_count_;
  const PackedRegion::DotPlan plan = region_->plan_dot(qn.data());
#pragma omp parallel for schedule(static)
  for (int t0 = 0; t0 < nq; t0 += kBlockTokens) {
    region_->dot_rows(plan, t0, std::min(nq, t0 + kBlockTokens), qout + t0);
  }
  rescale(qout, nq);
  dense(recent_rows_.data(), recent_count_, q, out + sink_count_ + nq);
}

void TensorCache::add_untransformed(std::vector<float>& acc, float* out) const {
  if (!norm_.empty())
    for (int c = 0; c < d_; ++c) acc[c] *= norm_[c];
  rotator_.inverse(acc.data());
  for (int c = 0; c < d_; ++c) out[c] += acc[c];
}

void TensorCache::weighted_sum(const float* p, float* out) const {
  std::fill(out, out + d_, 0.0f);
  auto dense = [&](const std::uint16_t* rows, int count, const float* w, float* o) {
    for (int t = 0; t < count; ++t)
      for (int c = 0; c < d_; ++c) o[c] += w[t] * half_bits_to_float(rows[static_cast<std::size_t>(t) * d_ + c]);
  };
  // Token scales fold into the weights: sum_t p_t sigma_t x'_t.
  auto scaled = [&](const float* w, int count) {
    std::vector<float> ws(w, w + count);
    if (!token_scale_.empty())
      for (int t = 0; t < count; ++t) ws[t] *= token_scale_[t];
    return ws;
  };
  std::vector<float> acc(static_cast<std::size_t>(d_), 0.0f);
  if (spec_.mode == Mode::none) {
    const std::vector<float> ws = scaled(p, size_);
    for (int t = 0; t < size_; ++t)
      for (int c = 0; c < d_; ++c) acc[c] += ws[t] * dense32_[static_cast<std::size_t>(t) * d_ + c];
    add_untransformed(acc, out);
    return;
  }
  if (spec_.mode == Mode::fp16) {
    dense(dense16_.data(), size_, scaled(p, size_).data(), acc.data());
    add_untransformed(acc, out);
    return;
  }
  dense(sink_rows_.data(), sink_count_, p, out);
  const int nq = quantized_tokens();
  const int blocks = (nq + kBlockTokens - 1) / kBlockTokens;
  std::vector<float> partial(static_cast<std::size_t>(blocks) * d_);
  const std::vector<float> pq_scaled = scaled(p + sink_count_, nq);
  const float* pq = pq_scaled.data();
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; ++blk) {
    const int t0 = blk * kBlockTokens;
    region_->weighted_sum(pq + t0, t0, std::min(nq, t0 + kBlockTokens), &partial[static_cast<std::size_t>(blk) * d_]);
  }
  for (int blk = 0; blk < blocks; ++blk)
    for (int c = 0; c < d_; ++c) acc[c] += partial[static_cast<std::size_t>(blk) * d_ + c];
  add_untransformed(acc, out);
  dense(recent_rows_.data(), recent_count_, p + sink_count_ + nq, out);
}

void TensorCache::dequantize(float* out) const {
  const std::size_t d = static_cast<std::size_t>(d_);
  // Undoes the transform in place: x = sigma_t * R^T (f * x').
  auto untransform = [&](float* rows, int count) {
    for (int t = 0; t < count; ++t) {
      float* x = rows + static_cast<std::size_t>(t) * d;
      if (!norm_.empty())
        for (std::size_t c = 0; c < d; ++c) x[c] *= norm_[c];
      rotator_.inverse(x);
      if (!token_scale_.empty())
        for (std::size_t c = 0; c < d; ++c) x[c] *= token_scale_[t];
    }
  };
  if (!spec_.quantized()) {
    for (std::size_t i = 0; i < dense32_.size(); ++i) out[i] = dense32_[i];
    for (std::size_t i = 0; i < dense16_.size(); ++i) out[i] = half_bits_to_float(dense16_[i]);
    untransform(out, size_);
    return;
  }
  for (std::size_t i = 0; i < sink_rows_.size(); ++i) out[i] = half_bits_to_float(sink_rows_[i]);
  float* q = out + sink_count_ * d;
  const int nq = quantized_tokens();
  region_->dequantize(q);
  untransform(q, nq);
  float* r = q + nq * d;
  for (std::size_t i = 0; i < recent_rows_.size(); ++i) r[i] = half_bits_to_float(recent_rows_[i]);
}

std::size_t TensorCache::bytes() const {
  return dense32_.size() * sizeof(float) + dense16_.size() * 2 + sink_rows_.size() * 2 + recent_rows_.size() * 2 +
         (region_ ? region_->bytes() : 0) + norm_bits_.size() * 2 + token_scale_.size() * sizeof(float);
}

double TensorCache::bits_per_element() const {
  return size_ == 0 ? 0.0 : 8.0 * static_cast<double>(bytes()) / (static_cast<double>(size_) * d_);
}

}  // namespace kvq::cpu
