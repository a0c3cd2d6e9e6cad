#include "cpu_ref/codes.h"

#include <array>

#include "core/packed.h"

namespace kvq::cpu {
namespace {

// table2[byte] = the 4 two-bit codes of the byte; table4[byte] = its 2 four-bit codes;
// table_high[byte] = 4 * each of its 8 bits (the third bit of 3-bit codes).
struct Tables {
  alignas(64) std::array<std::array<float, 4>, 256> two{};
  alignas(64) std::array<std::array<float, 2>, 256> four{};
  alignas(64) std::array<std::array<float, 8>, 256> high{};
  Tables() {
    for (int b = 0; b < 256; ++b) {
      for (int i = 0; i < 4; ++i) two[b][i] = static_cast<float>((b >> (2 * i)) & 3);
      for (int i = 0; i < 2; ++i) four[b][i] = static_cast<float>((b >> (4 * i)) & 15);
      for (int i = 0; i < 8; ++i) high[b][i] = static_cast<float>(((b >> i) & 1) * 4);
    }
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}

inline std::uint32_t byte_of(const std::uint32_t* words, int k) { return (words[k >> 2] >> ((k & 3) * 8)) & 0xffu; }

}  // namespace

void decode_chunk(const std::uint32_t* chunk, int bits, float* out) {
  const Tables& t = tables();
  switch (bits) {
    case 2:
      for (int k = 0; k < 8; ++k)
        for (int i = 0; i < 4; ++i) out[4 * k + i] = t.two[byte_of(chunk, k)][i];
      return;
    case 3:
      for (int k = 0; k < 8; ++k)
        for (int i = 0; i < 4; ++i) out[4 * k + i] = t.two[byte_of(chunk, k)][i];
      for (int k = 0; k < 4; ++k)
        for (int i = 0; i < 8; ++i) out[8 * k + i] += t.high[byte_of(chunk + 2, k)][i];
      return;
    case 4:
      for (int k = 0; k < 16; ++k)
        for (int i = 0; i < 2; ++i) out[2 * k + i] = t.four[byte_of(chunk, k)][i];
      return;
    default:
      for (int i = 0; i < 32; ++i) out[i] = static_cast<float>(packed::get_code(chunk, bits, i));
      return;
  }
}

float chunk_dot(const std::uint32_t* chunk, int bits, int first, int count, const float* w) {
  const Tables& t = tables();
  // Four running sums, combined in a fixed order: vectorizable and deterministic.
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (bits == 2 || bits == 3) {
    for (int k = first / 4; k < (first + count) / 4; ++k) {
      const auto& v = t.two[byte_of(chunk, k)];
      const float* wk = w + 4 * k - first;
      for (int i = 0; i < 4; ++i) acc[i] += v[i] * wk[i];
    }
    if (bits == 3) {
      for (int k = first / 8; k < (first + count) / 8; ++k) {
        const auto& v = t.high[byte_of(chunk + 2, k)];
        const float* wk = w + 8 * k - first;
        for (int i = 0; i < 4; ++i) acc[i] += v[i] * wk[i] + v[i + 4] * wk[i + 4];
      }
    }
  } else if (bits == 4) {
    for (int k = first / 2; k < (first + count) / 2; k += 2) {
      const auto& a = t.four[byte_of(chunk, k)];
      const auto& b = t.four[byte_of(chunk, k + 1)];
      const float* wk = w + 2 * k - first;
      acc[0] += a[0] * wk[0];
      acc[1] += a[1] * wk[1];
      acc[2] += b[0] * wk[2];
      acc[3] += b[1] * wk[3];
    }
  } else {
    for (int i = 0; i < count; i += 4)
      for (int j = 0; j < 4; ++j)
        acc[j] += static_cast<float>(packed::get_code(chunk, bits, first + i + j)) * w[i + j];
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

}  // namespace kvq::cpu
