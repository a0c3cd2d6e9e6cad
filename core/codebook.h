#pragma once
// Lloyd-Max scalar codebooks for a unit Gaussian (TurboQuant's per-coordinate quantizer;
// ALGORITHMS.md, "Other peers"). kvq computes them (Lloyd's iteration on the exact Gaussian
// integrals, in double) rather than copying tables; tests check the distortions against the
// known 0.3634, 0.1175, 0.0345, 0.0095 per coordinate for b = 1..4.
// mode = codebook stores code f for level levels[f] (ascending), no per-group metadata; the
// token scale brings each coordinate to unit RMS first (docs/SPEC.md).
#include <cstdint>
#include <vector>

#include "core/packed.h"  // KVQ_HD

namespace kvq {

struct Codebook {
  int bits = 0;
  std::vector<float> levels;      // 2^bits reconstruction levels, ascending
  std::vector<float> thresholds;  // 2^bits - 1 decision thresholds, midpoints of adjacent levels
  double distortion = 0;          // E[(X - Q(X))^2] for X ~ N(0, 1), from the exact integrals
  int iterations = 0;             // Lloyd iterations until the levels moved less than 1e-13
};

// The codebook for b bits (1..4), computed once and cached; throws kvq::Error for other b.
const Codebook& lloyd_max(int bits);

// Code of x: the number of thresholds strictly below x (so a tie goes to the lower level).
KVQ_HD std::uint32_t codebook_code(float x, const float* thresholds, int count) {
  std::uint32_t f = 0;
  for (int i = 0; i < count; ++i) f += x > thresholds[i] ? 1u : 0u;
  return f;
}

}  // namespace kvq
