#pragma once
// The second pass of split-sequence GEMVs: out[i] = sum over splits of partial[s][i], in split order,
// so results do not depend on how blocks were scheduled; a warp's exclusive prefix sum; a block's
// max or sum.
#include <cuda_runtime.h>

#include "gpu/dependent_launch.cuh"

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

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// op over every thread's v, returned to every thread (all of the block must call it): each warp by
// shuffles, then the warps' results in warp order. red: 32 floats of shared memory, free again on return.
template <class Op>
__device__ float block_reduce(float v, float* red, Op op) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float out = red[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) out = op(out, red[w]);
  __syncthreads();
  return out;
}

template <typename T = float>
__global__ void sum_splits(const T* partial, int splits, long long n, T* out) {
  wait_for_prior_kernels();
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  T sum = 0;
  for (int s = 0; s < splits; ++s) sum += partial[s * n + i];
  out[i] = sum;
}

// Launches sum_splits over n outputs; returns the launch's error.
inline cudaError_t add_splits(const float* partial, int splits, long long n, float* out, cudaStream_t stream) {
  return launch_kernel(sum_splits<float>, dim3(static_cast<unsigned>((n + 255) / 256)), dim3(256), 0, stream, partial, splits, n, out);
}

}  // namespace kvq::gpu
