#pragma once
// The second pass of split-sequence GEMVs: out[i] = sum over splits of partial[s][i], in split order,
// so results do not depend on how blocks were scheduled; and a warp's exclusive prefix sum.
#include <cuda_runtime.h>

namespace kvq::gpu {

// The sum of x over the lanes below this one (every lane of the warp must call it): where a lane's
// hybrid zero points start among its zero-block's, given each lane's count of asymmetric groups.
__device__ __forceinline__ int warp_exclusive_sum(int x) {
  const int lane = threadIdx.x & 31;
  int inclusive = x;
#pragma unroll
  for (int k = 1; k < 32; k <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, inclusive, k);
    if (lane >= k) inclusive += up;
  }
  return inclusive - x;
}

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
