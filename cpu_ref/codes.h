#pragma once
// Fast CPU reads of packed code chunks (core/packed.h layouts) through small
// byte-indexed decode tables: one table load yields 4 (2-bit), 2 (4-bit) or
// 8 high bits (3-bit) codes as floats, ready to multiply with 4 or 8 weights.
#include <cstdint>

namespace kvq::cpu {

// Decodes all 32 codes of a chunk into floats.
void decode_chunk(const std::uint32_t* chunk, int bits, float* out);

// sum_{i in [first, first+count)} w[i - first] * f_i for codes of one chunk;
// first is 0 or 16, count is 16 or 32 (first + count <= 32).
float chunk_dot(const std::uint32_t* chunk, int bits, int first, int count, const float* w);

}  // namespace kvq::cpu
