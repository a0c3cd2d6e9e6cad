#pragma once
// The second pass of split-sequence GEMVs: out[i] = sum over splits of partial[s][i], in split order,
// so results do not depend on how blocks were scheduled.
#include <cuda_runtime.h>

namespace kvq::gpu {

template <typename T = float>
__global__ void sum_splits(const T* partial, int splits, long long n, T* out) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  T sum = 0;
  for (int s = 0; s < splits; ++s) sum += partial[s * n + i];
  out[i] = sum;
}

// Launches sum_splits over n outputs; returns the launch's error.
inline cudaError_t add_splits(const float* partial, int splits, long long n, float* out, cudaStream_t stream) {
  sum_splits<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(partial, splits, n, out);
  return cudaGetLastError();
}

}  // namespace kvq::gpu
