#include "gpu/launch.h"

#include <atomic>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "gpu/cuda_check.h"

namespace kvq::gpu {

namespace {
std::atomic<bool> g_dependent_launch{true};
}  // namespace

void set_dependent_launch(bool on) { g_dependent_launch.store(on, std::memory_order_relaxed); }
bool dependent_launch() { return g_dependent_launch.load(std::memory_order_relaxed); }

cudaError_t launch_info(const void* kernel, int threads, std::size_t smem, LaunchInfo& out, bool max_shared) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int, std::size_t, bool>, LaunchInfo> cache;
  // The shared-memory limit is one attribute per kernel: only ever raised, so that a smaller request
  // never lowers it below one already cached. The carveout likewise, once asked for, stays.
  static std::map<std::pair<int, const void*>, std::size_t> limit;
  static std::map<std::pair<int, const void*>, bool> carveout;
  int device = 0;
  KVQ_CUDA_TRY(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(device, kernel, threads, smem, max_shared);
  const auto it = cache.find(key);
  if (it != cache.end()) {
    out = it->second;
    return cudaSuccess;
  }
  LaunchInfo info;
  KVQ_CUDA_TRY(cudaDeviceGetAttribute(&info.multiprocessors, cudaDevAttrMultiProcessorCount, device));
  bool& carved = carveout[std::make_pair(device, kernel)];
  if (max_shared && !carved) {
    KVQ_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
    carved = true;
  }
  std::size_t& set = limit[std::make_pair(device, kernel)];
  if (smem > set) {
    KVQ_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    set = smem;
  }
  KVQ_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&info.blocks_per_sm, kernel, threads, smem));
  if (info.blocks_per_sm < 1) return cudaErrorInvalidConfiguration;
  cache[key] = info;
  out = info;
  return cudaSuccess;
}

}  // namespace kvq::gpu
