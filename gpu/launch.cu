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
  // A kernel's attributes, one set per (device, kernel): the shared-memory limit is only ever raised,
  // so that a smaller request never lowers it below one already cached; the carveout, once asked
  // for, stays.
  struct Attributes {
    std::size_t limit = 0;
    bool max_shared = false;
  };
  static std::map<std::pair<int, const void*>, Attributes> attributes;
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
  Attributes& set = attributes[std::make_pair(device, kernel)];
  if (max_shared && !set.max_shared) {
    KVQ_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
    set.max_shared = true;
  }
  if (smem > set.limit) {
    KVQ_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    set.limit = smem;
  }
  KVQ_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&info.blocks_per_sm, kernel, threads, smem));
  if (info.blocks_per_sm < 1) return cudaErrorInvalidConfiguration;
  cache[key] = info;
  out = info;
  return cudaSuccess;
}

}  // namespace kvq::gpu
