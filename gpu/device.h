#pragma once
// What launchers need to know about the device to choose their launch shapes.
#include <cstddef>
#include <string>

#include <cuda_runtime.h>

namespace kvq::gpu {

struct DeviceInfo {
  int device = 0;
  std::string name;
  int compute_major = 0, compute_minor = 0;
  int multiprocessors = 0;
  std::size_t l2_bytes = 0;
  std::size_t shared_per_block_optin = 0;  // bytes a block may use after cudaFuncSetAttribute
  std::size_t global_bytes = 0;
  double peak_bandwidth_gbs = 0;  // from memory clock and bus width (a lead; measure the real one)
};

// Number of CUDA devices; 0 (not an error) when the driver or device is absent.
int device_count();
// Properties of `device`; returns the CUDA error instead of aborting.
cudaError_t query_device(int device, DeviceInfo& out);

}  // namespace kvq::gpu
