#include "core/rotation.h"

#include <cmath>
#include <random>

namespace kvq {

Rotator::Rotator(Rotation kind, int head_dim, std::uint64_t stream)
    : kind_(kind), d_(head_dim), norm_(static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)))) {
  if (kind_ == Rotation::none) return;
  signs_.assign(static_cast<std::size_t>(d_), 1.0f);
  if (kind_ == Rotation::random) {
    // mt19937_64's output sequence is fixed by the standard (distributions are not), so the top bit
    // of each draw gives the same signs on every platform.
    std::mt19937_64 rng(stream);
    for (float& s : signs_) s = (rng() >> 63) ? -1.0f : 1.0f;
  }
}

void Rotator::forward(float* x) const {
  if (identity()) return;
  for (int c = 0; c < d_; ++c) x[c] *= signs_[c];
  fwht_inplace(x, d_);
  for (int c = 0; c < d_; ++c) x[c] *= norm_;
}

void Rotator::inverse(float* x) const {
  if (identity()) return;
  // R^T = D H / sqrt(d): H is symmetric.
  fwht_inplace(x, d_);
  for (int c = 0; c < d_; ++c) x[c] *= norm_ * signs_[c];
}

}  // namespace kvq
