#pragma once
// Orthogonal rotations along head_dim (ALGORITHMS.md, "OScaR"; TurboQuant):
//   hadamard: R = H_d / sqrt(d), H_d the Sylvester-ordered Walsh-Hadamard matrix;
//   random:   R = H_d / sqrt(d) * D, D = diag(+-1) drawn from a seed (rotation_stream()).
// Scores are unchanged since (R q) . (R k) = q . k; values are rotated back after p . V.
// The butterfly order is fixed (fwht_inplace), so host and device produce the same bits.
#include <cstdint>
#include <vector>

#include "core/packed.h"  // KVQ_HD
#include "core/spec.h"

namespace kvq {

// In-place unnormalized fast Walsh-Hadamard transform of n = 2^k values, x <- H_n x, fp32,
// butterflies of span 1, 2, 4, ... in index order. Host and device alike.
KVQ_HD void fwht_inplace(float* x, int n) {
  for (int h = 1; h < n; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

// K and V of one cache draw their signs from different streams of the same rotation_seed.
inline std::uint64_t rotation_stream(int seed, TensorKind tensor) {
  return 2 * static_cast<std::uint64_t>(static_cast<std::uint32_t>(seed)) + (tensor == TensorKind::value ? 1u : 0u);
}

class Rotator {
 public:
  Rotator() = default;
  // stream: the seed of the random signs, rotation_stream(spec.rotation_seed, tensor).
  Rotator(Rotation kind, int head_dim, std::uint64_t stream);

  bool identity() const { return kind_ == Rotation::none; }
  int head_dim() const { return d_; }
  // x <- R x (one row of head_dim values).
  void forward(float* x) const;
  // x <- R^T x, the exact inverse up to rounding.
  void inverse(float* x) const;
  // +-1 per channel (all +1 for hadamard); empty for none.
  const std::vector<float>& signs() const { return signs_; }
  // 1 / sqrt(head_dim) in fp32, the normalization applied after the butterflies.
  float norm() const { return norm_; }

 private:
  Rotation kind_ = Rotation::none;
  int d_ = 0;
  float norm_ = 1.0f;
  std::vector<float> signs_;
};

}  // namespace kvq
