#pragma once
// Launch shapes from the device's properties: the dynamic shared memory a kernel asks for is set once,
// and the resident blocks per multiprocessor are measured by the occupancy API, both cached per
// (device, kernel, shared memory) since the launchers run once per decode step.
#include <cuda_runtime.h>

#include <cstddef>

namespace kvq::gpu {

struct LaunchInfo {
  int multiprocessors = 0;
  int blocks_per_sm = 0;
  // Blocks per region that make one wave of resident blocks when `regions` regions share the device.
  int wave_per_region(int regions) const {
    const int blocks = blocks_per_sm * multiprocessors / regions;
    return blocks > 1 ? blocks : 1;
  }
};

// For `kernel` with `threads` threads and `smem` bytes of dynamic shared memory on the current device.
cudaError_t launch_info(const void* kernel, int threads, std::size_t smem, LaunchInfo& out);

}  // namespace kvq::gpu
