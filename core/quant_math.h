#pragma once
// Quantization of one group of G values (ALGORITHMS.md, "Quantizers" and "kvq's
// conventions"), host and device alike so the GPU packer reproduces cpu_ref's bits.
// Arithmetic is fp32 with no FMA contraction (the build passes -ffp-contract=off /
// --fmad=false); scales and zero points are rounded to the stored precision first
// and codes are computed against the stored values; rounding is half-to-even.
#include <cmath>
#include <cstdint>

#include "core/packed.h"

#if defined(__CUDA_ARCH__)
#include <cuda_fp16.h>
#else
#include "core/half.h"
#endif

namespace kvq::qmath {

enum class GroupMode : int { sym = 0, asym = 1, hybrid = 2 };

struct GroupParams {
  GroupMode mode = GroupMode::sym;
  int bits = 2;
  bool twos = false;         // symmetric levels: two's complement (true) or sign-magnitude (false)
  int hybrid_asym_bits = 1;  // bits of hybrid's asymmetric arm (b-1 or b)
  bool meta_fp16 = true;
};

struct GroupQuant {
  float scale = 0.0f;  // stored scale, >= 0
  float zero = 0.0f;   // stored zero point (asymmetric groups only)
  bool asym = false;   // which arm the group uses
};

// The value a scale or zero point takes once stored.
KVQ_HD float store_meta(float x, bool fp16) {
  if (!fp16) return x;
#if defined(__CUDA_ARCH__)
  return __half2float(__float2half_rn(x));
#else
  return kvq::round_to_half(x);
#endif
}

KVQ_HD float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

// Asymmetric arm: s = (max-min)/(2^b-1), z = min; f = clamp(rint((x - z)/s), 0, 2^b-1).
// A constant group stores s = 0 and f = 0, so x^ = z (never 0/0).
KVQ_HD GroupQuant quantize_asym(const float* x, int stride, int n, int bits, bool fp16, std::uint8_t* f) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    const float v = x[i * stride];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  const float top = static_cast<float>((1 << bits) - 1);
  GroupQuant g;
  g.asym = true;
  g.scale = store_meta((hi - lo) / top, fp16);
  g.zero = store_meta(lo, fp16);
  for (int i = 0; i < n; ++i) {
    f[i] = g.scale == 0.0f ? 0 : static_cast<std::uint8_t>(clampf(rintf((x[i * stride] - g.zero) / g.scale), 0.0f, top));
  }
  return g;
}

// Symmetric arm. signmag: s = max|x|/(2^(b-1)-1), v in [-(2^(b-1)-1), 2^(b-1)-1];
// twos: s = max|x|/2^(b-1), v in [-2^(b-1), 2^(b-1)-1]. Stored as f = v + offset.
KVQ_HD GroupQuant quantize_sym(const float* x, int stride, int n, int bits, bool twos, bool fp16, std::uint8_t* f) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float a = fabsf(x[i * stride]);
    amax = a > amax ? a : amax;
  }
  const int offset = packed::sym_offset(bits, twos);
  const float lo = twos ? -static_cast<float>(1 << (bits - 1)) : -static_cast<float>((1 << (bits - 1)) - 1);
  const float hi = static_cast<float>((1 << (bits - 1)) - 1);
  GroupQuant g;
  g.scale = store_meta(amax / static_cast<float>(offset), fp16);
  for (int i = 0; i < n; ++i) {
    const float v = g.scale == 0.0f ? 0.0f : clampf(rintf(x[i * stride] / g.scale), lo, hi);
    f[i] = static_cast<std::uint8_t>(static_cast<int>(v) + offset);
  }
  return g;
}

// What a field means (packed.h): exact definitional forms, used to dequantize.
KVQ_HD float dequant_asym(std::uint32_t f, float scale, float zero) { return static_cast<float>(f) * scale + zero; }
KVQ_HD float dequant_sym(std::uint32_t f, float scale, int offset) {
  return static_cast<float>(static_cast<int>(f) - offset) * scale;
}

// Sum of |x - x^| in fp32, in index order (the hybrid choice must be reproducible bit for bit).
KVQ_HD float l1_asym(const float* x, int stride, int n, const GroupQuant& g, const std::uint8_t* f) {
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) sum += fabsf(x[i * stride] - dequant_asym(f[i], g.scale, g.zero));
  return sum;
}
KVQ_HD float l1_sym(const float* x, int stride, int n, const GroupQuant& g, int offset, const std::uint8_t* f) {
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) sum += fabsf(x[i * stride] - dequant_sym(f[i], g.scale, offset));
  return sum;
}

// Quantizes x[0], x[stride], ..., x[(n-1)*stride] (n <= 128) into fields f[0..n).
// Hybrid keeps the arm with the lower L1 error; a tie goes to asymmetric.
KVQ_HD GroupQuant quantize_group(const float* x, int stride, int n, const GroupParams& p, std::uint8_t* f) {
  switch (p.mode) {
    case GroupMode::asym: return quantize_asym(x, stride, n, p.bits, p.meta_fp16, f);
    case GroupMode::sym: return quantize_sym(x, stride, n, p.bits, p.twos, p.meta_fp16, f);
    case GroupMode::hybrid: break;
  }
  std::uint8_t fa[128];
  const GroupQuant a = quantize_asym(x, stride, n, p.hybrid_asym_bits, p.meta_fp16, fa);
  const GroupQuant s = quantize_sym(x, stride, n, p.bits, p.twos, p.meta_fp16, f);
  const int offset = packed::sym_offset(p.bits, p.twos);
  if (l1_asym(x, stride, n, a, fa) > l1_sym(x, stride, n, s, offset, f)) return s;
  for (int i = 0; i < n; ++i) f[i] = fa[i];
  return a;
}

}  // namespace kvq::qmath
