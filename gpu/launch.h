#pragma once
// Launch shapes from the device's properties: the dynamic shared memory a kernel asks for is set once,
// and the resident blocks per multiprocessor are measured by the occupancy API, both cached per
// (device, kernel, shared memory, carveout) since the launchers run once per decode step.
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

// A split-sequence launch over `units` pieces of each region's sequence: at most `wanted` splits (the
// caller's scratch), never more than one wave of resident blocks (a partial second wave would double
// the last runs' time), each split a run of `per_split` whole pieces.
struct SplitRuns {
  int per_split = 1, splits = 1;
};
inline SplitRuns split_runs(int units, int wanted, const LaunchInfo& info, int regions) {
  units = units > 1 ? units : 1;
  int want = info.wave_per_region(regions);
  if (wanted < want) want = wanted;
  if (units < want) want = units;
  if (want < 1) want = 1;
  SplitRuns runs;
  runs.per_split = (units + want - 1) / want;
  runs.splits = (units + runs.per_split - 1) / runs.per_split;
  return runs;
}

// For `kernel` with `threads` threads and `smem` bytes of dynamic shared memory on the current device.
// `max_shared` asks for the most shared memory in the L1/shared carveout (a hint, set once per
// (device, kernel) before the occupancy is measured), for kernels whose registers, not their shared
// memory, should decide the resident blocks.
cudaError_t launch_info(const void* kernel, int threads, std::size_t smem, LaunchInfo& out, bool max_shared = false);

// Whether kvq's kernels are launched as programmatic dependent launches (gpu/dependent_launch.cuh).
// On by default; off gives timings of plain launches (`bench_gpu --dependent_launch=0`). Process-wide,
// read at each launch.
void set_dependent_launch(bool on);
bool dependent_launch();

// set_dependent_launch(on) for the object's lifetime; the mode it found comes back after.
class DependentLaunchScope {
 public:
  explicit DependentLaunchScope(bool on) : before_(dependent_launch()) { set_dependent_launch(on); }
  ~DependentLaunchScope() { set_dependent_launch(before_); }
  DependentLaunchScope(const DependentLaunchScope&) = delete;
  DependentLaunchScope& operator=(const DependentLaunchScope&) = delete;

 private:
  bool before_;
};

}  // namespace kvq::gpu
