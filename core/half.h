#pragma once
// fp16 on the host, rounding to nearest, ties to even, exactly as CUDA's
// __float2half_rn, so the CPU reference and the GPU packer produce the same bits.
// The F16C instructions do it in hardware where the CPU has them; Eigen::half,
// bit-identical, everywhere else. Packed storage keeps fp16 as raw uint16_t bits.
#include <cstdint>

#include <Eigen/Core>
#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace kvq {

inline std::uint16_t float_to_half_bits(float x) {
#if defined(__F16C__)
  return static_cast<std::uint16_t>(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(x));
#endif
}

inline float half_bits_to_float(std::uint16_t bits) {
#if defined(__F16C__)
  return _cvtsh_ss(bits);
#else
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
#endif
}

// The value x takes once stored as fp16.
inline float round_to_half(float x) { return half_bits_to_float(float_to_half_bits(x)); }

}  // namespace kvq
