#pragma once
// fp16 on the host. Eigen::half rounds to nearest, ties to even, exactly as
// CUDA's __float2half_rn, so the CPU reference and the GPU packer produce the
// same bits. Packed storage keeps fp16 as raw uint16_t bit patterns.
#include <cstdint>

#include <Eigen/Core>

namespace kvq {

inline std::uint16_t float_to_half_bits(float x) {
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(x));
}

inline float half_bits_to_float(std::uint16_t bits) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
}

// The value x takes once stored as fp16.
inline float round_to_half(float x) { return half_bits_to_float(float_to_half_bits(x)); }

}  // namespace kvq
