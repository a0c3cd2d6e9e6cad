#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/rotate.h"

namespace kvq::gpu {
namespace {

// fwht_inplace's butterflies (core/rotation.h), stage by stage with every index known at compile
// time so the row stays in registers. Each output depends only on the stage order, so the bits
// are fwht_inplace's (the GPU rotation test compares them).
template <int D>
__device__ __forceinline__ void fwht_registers(float (&x)[D]) {
  constexpr int kStages = D == 64 ? 6 : 7;
#pragma unroll
  for (int stage = 0; stage < kStages; ++stage) {
    const int h = 1 << stage;
#pragma unroll
    for (int k = 0; k < D / 2; ++k) {
      const int j = (k / h) * 2 * h + k % h;  // the k-th pair (j, j + h) of this stage
      const float a = x[j], b = x[j + h];
      x[j] = a + b;
      x[j + h] = a - b;
    }
  }
}

// One thread per row, the row in registers. The operations and their order are
// cpu::scale_and_rotate's and Rotator's, so the bits agree: the RMS is a sequential double sum,
// division is IEEE (-prec-div), no FMA contraction (--fmad=false).
template <int D>
__global__ void __launch_bounds__(128) rotate_kernel(RotateParams p) {
  wait_for_prior_kernels();
  const long long row = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (row >= p.count) return;
  float* x_row = p.rows + row * D;
  float x[D];
#pragma unroll
  for (int c = 0; c < D; c += 4) {
    const float4 v = reinterpret_cast<const float4*>(x_row)[c / 4];
    x[c] = v.x, x[c + 1] = v.y, x[c + 2] = v.z, x[c + 3] = v.w;
  }
  if (!p.inverse && p.scale != TokenScaleMode::none) {
    float sigma;
    if (p.scale == TokenScaleMode::omni) {
      sigma = p.omni_scale[row];
    } else {
      double sum = 0;
#pragma unroll
      for (int c = 0; c < D; ++c) sum += static_cast<double>(x[c]) * x[c];
      sigma = static_cast<float>(sqrt(sum / D));
    }
    p.token_scale[row] = sigma;
    if (sigma > 0.0f) {
#pragma unroll
      for (int c = 0; c < D; ++c) x[c] /= sigma;
    }
  }
  if (p.signs != nullptr) {
    const float norm = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
    if (!p.inverse) {
#pragma unroll
      for (int c = 0; c < D; ++c) x[c] *= p.signs[c];
    }
    fwht_registers<D>(x);
#pragma unroll
    for (int c = 0; c < D; ++c) x[c] *= p.inverse ? norm * p.signs[c] : norm;
  }
#pragma unroll
  for (int c = 0; c < D; c += 4) reinterpret_cast<float4*>(x_row)[c / 4] = make_float4(x[c], x[c + 1], x[c + 2], x[c + 3]);
}

}  // namespace

cudaError_t rotate_rows(const RotateParams& p, cudaStream_t stream) {
  if (p.count < 0 || (p.count > 0 && p.rows == nullptr)) return cudaErrorInvalidValue;
  if (!p.inverse && p.scale != TokenScaleMode::none && p.token_scale == nullptr) return cudaErrorInvalidValue;
  if (!p.inverse && p.scale == TokenScaleMode::omni && p.omni_scale == nullptr) return cudaErrorInvalidValue;
  if (p.count == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((p.count + 127) / 128);
  switch (p.head_dim) {
    case 64: return launch_kernel(rotate_kernel<64>, dim3(blocks), dim3(128), 0, stream, p);
    case 128: return launch_kernel(rotate_kernel<128>, dim3(blocks), dim3(128), 0, stream, p);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace kvq::gpu
