#pragma once
// Template dispatch for the launchers (FlashInfer style): one switch per template axis, each
// returning cudaErrorInvalidValue for a value that is not built.
#include <cuda_runtime.h>

namespace kvq::gpu {

// The values the switches below build, for launchers' shape checks before they dispatch.
inline bool bits_built(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }
inline bool head_dim_built(int head_dim) { return head_dim == 64 || head_dim == 128; }
inline bool heads_built(int group) { return group >= 1 && group <= 8; }  // query heads per kv head
// Group sizes the packer and the CUDA-core GEMVs take (the tensor-core kernels take fewer).
inline bool group_size_built(int size) { return size == 16 || size == 32 || size == 64 || size == 128; }

}  // namespace kvq::gpu

#define KVQ_DISPATCH_HEAD_DIM(d, D, ...)      \
  switch (d) {                               \
    case 64: { constexpr int D = 64; __VA_ARGS__ break; } \
    case 128: { constexpr int D = 128; __VA_ARGS__ break; } \
    default: return cudaErrorInvalidValue;   \
  }
#define KVQ_DISPATCH_BITS(b, B, ...)          \
  switch (b) {                               \
    case 2: { constexpr int B = 2; __VA_ARGS__ break; } \
    case 3: { constexpr int B = 3; __VA_ARGS__ break; } \
    case 4: { constexpr int B = 4; __VA_ARGS__ break; } \
    case 8: { constexpr int B = 8; __VA_ARGS__ break; } \
    default: return cudaErrorInvalidValue;   \
  }

// A region's group mode (core/packed.h's GroupMode) as a template argument.
#define KVQ_DISPATCH_MODE(m, MODE, ...)       \
  switch (m) {                               \
    case GroupMode::sym: { constexpr GroupMode MODE = GroupMode::sym; __VA_ARGS__ break; } \
    case GroupMode::asym: { constexpr GroupMode MODE = GroupMode::asym; __VA_ARGS__ break; } \
    case GroupMode::hybrid: { constexpr GroupMode MODE = GroupMode::hybrid; __VA_ARGS__ break; } \
    default: return cudaErrorInvalidValue;   \
  }

#define KVQ_DISPATCH_GROUP(g, GROUP, ...)     \
  switch (g) {                               \
    case 1: { constexpr int GROUP = 1; __VA_ARGS__ break; } \
    case 2: { constexpr int GROUP = 2; __VA_ARGS__ break; } \
    case 3: { constexpr int GROUP = 3; __VA_ARGS__ break; } \
    case 4: { constexpr int GROUP = 4; __VA_ARGS__ break; } \
    case 5: { constexpr int GROUP = 5; __VA_ARGS__ break; } \
    case 6: { constexpr int GROUP = 6; __VA_ARGS__ break; } \
    case 7: { constexpr int GROUP = 7; __VA_ARGS__ break; } \
    case 8: { constexpr int GROUP = 8; __VA_ARGS__ break; } \
    default: return cudaErrorInvalidValue;   \
  }

// Query heads per kv head in buckets 1, 2, 4, 8: a bucket's kernel takes any count up to it (the
// outer-layout GEMVs, whose accumulators scale with the heads).
#define KVQ_DISPATCH_HEAD_BUCKET(g, HEADS, ...)               \
  switch ((g) <= 1 ? 1 : (g) <= 2 ? 2 : (g) <= 4 ? 4 : (g) <= 8 ? 8 : 0) { \
    case 1: { constexpr int HEADS = 1; __VA_ARGS__ break; }   \
    case 2: { constexpr int HEADS = 2; __VA_ARGS__ break; }   \
    case 4: { constexpr int HEADS = 4; __VA_ARGS__ break; }   \
    case 8: { constexpr int HEADS = 8; __VA_ARGS__ break; }   \
    default: return cudaErrorInvalidValue;                    \
  }
