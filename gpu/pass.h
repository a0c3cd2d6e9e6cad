#pragma once
// How the GPU benchmarks time a kernel (bench/bench_gpu.cu and kvq bench's cuda backend,
// ablations/latency_cuda.cpp): CUDA events around a pass of kCallsPerPass calls, so that the host's
// launch latency overlaps the previous call instead of being counted, over copies of the inputs taken
// in turn so that a copy comes back only after the others have left the L2.
#include <cuda_runtime.h>

namespace kvq::gpu {

inline constexpr int kCallsPerPass = 20;

class Pass {
 public:
  Pass() {
    cudaEventCreate(&start_);
    cudaEventCreate(&stop_);
  }
  ~Pass() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  Pass(const Pass&) = delete;
  Pass& operator=(const Pass&) = delete;

  // One pass: launch(c) with copies c, c + 1, ... (mod copies); c carries over to the next pass. Stops
  // at the first failed launch; e is its error, or the events' first. Returns the pass's milliseconds.
  template <typename Launch>
  float run(Launch launch, int& c, int copies, cudaError_t& e) {
    e = cudaEventRecord(start_);
    for (int i = 0; i < kCallsPerPass && e == cudaSuccess; ++i) {
      e = launch(c);
      c = (c + 1) % copies;
    }
    const cudaError_t recorded = cudaEventRecord(stop_);
    const cudaError_t synced = cudaEventSynchronize(stop_);
    float ms = 0;
    const cudaError_t timed = cudaEventElapsedTime(&ms, start_, stop_);
    if (e == cudaSuccess) e = recorded != cudaSuccess ? recorded : synced != cudaSuccess ? synced : timed;
    return ms;
  }

 private:
  cudaEvent_t start_, stop_;
};

}  // namespace kvq::gpu
