#pragma once
// The rotation family's transform on the device (docs/SPEC.md, "Rotation and token scaling"),
// bit-identical to cpu::scale_and_rotate and Rotator: x <- R (x / sigma_t) for keys and values at
// pack time, x <- R q for queries, x <- R^T o for outputs of rotated values.
#include <cuda_runtime.h>

namespace kvq::gpu {

enum class TokenScaleMode : int { none = 0, head = 1, omni = 2 };

struct RotateParams {
  // rows: [count][head_dim] fp32, device (16-byte aligned), transformed in place.
  float* rows = nullptr;
  long long count = 0;
  int head_dim = 128;  // 64 or 128
  // signs: [head_dim] of +-1 (Rotator::signs()), device; null means no rotation (scaling only).
  const float* signs = nullptr;
  bool inverse = false;  // R^T instead of R (then no token scale)
  TokenScaleMode scale = TokenScaleMode::none;
  // omni: [count] scales given (cpu::omni_token_scale), device.
  const float* omni_scale = nullptr;
  // head/omni: [count] the scales used, written here, device (may alias omni_scale).
  float* token_scale = nullptr;
};

// Returns the first CUDA error; cudaErrorInvalidValue for an unsupported head_dim or missing array.
cudaError_t rotate_rows(const RotateParams& params, cudaStream_t stream = nullptr);

}  // namespace kvq::gpu
