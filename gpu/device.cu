#include "gpu/cuda_check.h"
#include "gpu/device.h"

namespace kvq::gpu {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver/device" error
    return 0;
  }
  return count;
}

cudaError_t query_device(int device, DeviceInfo& out) {
  cudaDeviceProp p{};
  KVQ_CUDA_TRY(cudaGetDeviceProperties(&p, device));
  int memory_clock_khz = 0, bus_width_bits = 0;
  KVQ_CUDA_TRY(cudaDeviceGetAttribute(&memory_clock_khz, cudaDevAttrMemoryClockRate, device));
  KVQ_CUDA_TRY(cudaDeviceGetAttribute(&bus_width_bits, cudaDevAttrGlobalMemoryBusWidth, device));
  out.device = device;
  out.name = p.name;
  out.compute_major = p.major;
  out.compute_minor = p.minor;
  out.multiprocessors = p.multiProcessorCount;
  out.l2_bytes = static_cast<std::size_t>(p.l2CacheSize);
  out.shared_per_block_optin = p.sharedMemPerBlockOptin;
  out.global_bytes = p.totalGlobalMem;
  // Double data rate: two transfers per clock.
  out.peak_bandwidth_gbs = 2.0 * memory_clock_khz * 1e3 * (bus_width_bits / 8.0) / 1e9;
  return cudaSuccess;
}

}  // namespace kvq::gpu
