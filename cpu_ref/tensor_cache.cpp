#include "cpu_ref/tensor_cache.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/half.h"

namespace kvq::cpu {

TensorCache::TensorCache(const TensorSpec& spec, int head_dim, int sink, int recent, bool key_norm)
    : spec_(spec), d_(head_dim), sink_(sink), recent_(recent), key_norm_(key_norm) {
  if (spec_.quantized()) region_.emplace(spec_, d_);
}

void TensorCache::push_window(std::vector<std::uint16_t>& window, const float* row) {
  for (int c = 0; c < d_; ++c) window.push_back(float_to_half_bits(row[c]));
}

std::vector<float> TensorCache::normalized(const float* rows, int count) {
  std::vector<float> out(rows, rows + static_cast<std::size_t>(count) * d_);
  if (!key_norm_ || count == 0) return out;
  if (norm_.empty()) {
    // Frozen on the first batch that gets stored past the windows (InnerQ); an all-zero channel keeps 1.
    norm_.assign(static_cast<std::size_t>(d_), 0.0f);
    for (int t = 0; t < count; ++t)
      for (int c = 0; c < d_; ++c) norm_[c] = std::max(norm_[c], std::fabs(rows[static_cast<std::size_t>(t) * d_ + c]));
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

void TensorCache::quantize_rows(const float* rows, int count) {
  if (count == 0) return;
  const std::vector<float> scaled = normalized(rows, count);
  region_->append(scaled.data(), count);
}

void TensorCache::store_dense(const float* rows, int count) {
  const std::vector<float> scaled = normalized(rows, count);
  if (spec_.mode == Mode::none) {
    dense32_.insert(dense32_.end(), scaled.begin(), scaled.end());
  } else {
    for (float x : scaled) dense16_.push_back(float_to_half_bits(x));
  }
  size_ += count;
}

void TensorCache::prefill(const float* rows, int count) {
  if (size_ != 0) fail("internal: prefill on a non-empty cache");
  if (!spec_.quantized()) {
    store_dense(rows, count);
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
  quantize_rows(as_fp16.data(), quantize);
  for (int t = sink + quantize; t < count; ++t) push_window(recent_rows_, rows + static_cast<std::size_t>(t) * d_);
  recent_count_ = count - sink - quantize;
  size_ = count;
}

void TensorCache::append(const float* row) {
  if (!spec_.quantized()) {
    store_dense(row, 1);
    return;
  }
  ++size_;
  if (sink_count_ < sink_) {
    push_window(sink_rows_, row);
    ++sink_count_;
    return;
  }
  push_window(recent_rows_, row);
  ++recent_count_;
  const int F = spec_.flush;
  if (recent_count_ >= recent_ + F) {
    const std::size_t n = static_cast<std::size_t>(F) * d_;
    std::vector<float> oldest(n);
    for (std::size_t i = 0; i < n; ++i) oldest[i] = half_bits_to_float(recent_rows_[i]);
    quantize_rows(oldest.data(), F);
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
  // Key normalization is folded into the query: (q * f) . (K / f) = q . K.
  std::vector<float> qn(q, q + d_);
  if (!norm_.empty())
    for (int c = 0; c < d_; ++c) qn[c] *= norm_[c];
  if (spec_.mode == Mode::none) {
    for (int t = 0; t < size_; ++t) {
      float acc = 0.0f;
      for (int c = 0; c < d_; ++c) acc += qn[c] * dense32_[static_cast<std::size_t>(t) * d_ + c];
      out[t] = acc;
    }
    return;
  }
  if (spec_.mode == Mode::fp16) {
    dense(dense16_.data(), size_, qn.data(), out);
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
  dense(recent_rows_.data(), recent_count_, q, out + sink_count_ + nq);
}

void TensorCache::weighted_sum(const float* p, float* out) const {
  std::fill(out, out + d_, 0.0f);
  auto dense = [&](const std::uint16_t* rows, int count, const float* w) {
    for (int t = 0; t < count; ++t)
      for (int c = 0; c < d_; ++c) out[c] += w[t] * half_bits_to_float(rows[static_cast<std::size_t>(t) * d_ + c]);
  };
  if (spec_.mode == Mode::none) {
    for (int t = 0; t < size_; ++t)
      for (int c = 0; c < d_; ++c) out[c] += p[t] * dense32_[static_cast<std::size_t>(t) * d_ + c];
    return;
  }
  if (spec_.mode == Mode::fp16) {
    dense(dense16_.data(), size_, p);
    return;
  }
  dense(sink_rows_.data(), sink_count_, p);
  const int nq = quantized_tokens();
  const int blocks = (nq + kBlockTokens - 1) / kBlockTokens;
  std::vector<float> partial(static_cast<std::size_t>(blocks) * d_);
  const float* pq = p + sink_count_;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; ++blk) {
    const int t0 = blk * kBlockTokens;
    region_->weighted_sum(pq + t0, t0, std::min(nq, t0 + kBlockTokens), &partial[static_cast<std::size_t>(blk) * d_]);
  }
  for (int blk = 0; blk < blocks; ++blk)
    for (int c = 0; c < d_; ++c) out[c] += partial[static_cast<std::size_t>(blk) * d_ + c];
  dense(recent_rows_.data(), recent_count_, p + sink_count_ + nq);
}

void TensorCache::dequantize(float* out) const {
  const std::size_t d = static_cast<std::size_t>(d_);
  if (!spec_.quantized()) {
    for (std::size_t i = 0; i < dense32_.size(); ++i) out[i] = dense32_[i];
    for (std::size_t i = 0; i < dense16_.size(); ++i) out[i] = half_bits_to_float(dense16_[i]);
    if (!norm_.empty())
      for (std::size_t i = 0; i < static_cast<std::size_t>(size_) * d; ++i) out[i] *= norm_[i % d];
    return;
  }
  for (std::size_t i = 0; i < sink_rows_.size(); ++i) out[i] = half_bits_to_float(sink_rows_[i]);
  float* q = out + sink_count_ * d;
  const int nq = quantized_tokens();
  region_->dequantize(q);
  if (!norm_.empty())
    for (int t = 0; t < nq; ++t)
      for (std::size_t c = 0; c < d; ++c) q[t * d + c] *= norm_[c];
  float* r = q + nq * d;
  for (std::size_t i = 0; i < recent_rows_.size(); ++i) r[i] = half_bits_to_float(recent_rows_[i]);
}

std::size_t TensorCache::bytes() const {
  return dense32_.size() * sizeof(float) + dense16_.size() * 2 + sink_rows_.size() * 2 + recent_rows_.size() * 2 +
         (region_ ? region_->bytes() : 0) + norm_bits_.size() * 2;
}

double TensorCache::bits_per_element() const {
  return size_ == 0 ? 0.0 : 8.0 * static_cast<double>(bytes()) / (static_cast<double>(size_) * d_);
}

}  // namespace kvq::cpu
