#pragma once
// Every kvq kernel is launched through launch_kernel, with programmatic dependent launch (Hopper) when
// dependent_launch() is on: the kernel's grid is launched while the previous kernel in its stream
// still runs, and its blocks start as that kernel's blocks leave, so the launch and the ramp overlap
// the previous kernel's tail (H100, paper shape, N = 32768, calls back to back: InnerQ keys 29.6 ->
// 28.1 us, InnerQ values 27.6 -> 25.0 us; docs/PERF.md).
// Correctness rests on one rule: a kernel launched this way calls wait_for_prior_kernels() before it
// touches global memory. That wait returns once the previous kernel has completed and its writes
// are visible, so no read or write moves ahead of it.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "gpu/launch.h"

namespace kvq::gpu {

// The first statement of every kvq kernel. Then lets the next kernel in the stream be launched: it
// starts no earlier than this grid's blocks free their room, and waits here in turn.
__device__ __forceinline__ void wait_for_prior_kernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Every 128-byte line holding a byte of [begin, begin + bytes) named to L2, line i by thread i mod
// threads (this thread is `thread` of `threads`). May come before wait_for_prior_kernels(): a prefetch
// writes no register and L2 is where every write lands, so no stale copy can be read; it lets a
// kernel's first loads come from memory while the previous kernel finishes. Lines holding a byte of
// the range only, so no address outside the array's pages.
__device__ __forceinline__ void prefetch_lines(const void* begin, long long bytes, int thread, int threads) {
  const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(begin);
  for (std::uintptr_t l = (at >> 7) + thread; l <= (at + bytes - 1) >> 7; l += threads) asm volatile("prefetch.global.L2 [%0];" ::"l"(l << 7));
}

// kernel<<<grid, block, smem, stream>>>(args...), as a dependent launch when dependent_launch() is on.
// Returns the launch's error.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = dependent_launch() ? 1 : 0;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace kvq::gpu
