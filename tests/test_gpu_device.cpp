// Device queries; skipped where no CUDA device exists (CI), run on the lent H100.
#include <gtest/gtest.h>

#include "gpu/device.h"

namespace kvq {
namespace {

TEST(GpuDevice, QueryReportsAUsableDevice) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  gpu::DeviceInfo info;
  ASSERT_EQ(gpu::query_device(0, info), cudaSuccess);
  EXPECT_FALSE(info.name.empty());
  EXPECT_GT(info.multiprocessors, 0);
  EXPECT_GT(info.l2_bytes, 0u);
  EXPECT_GT(info.peak_bandwidth_gbs, 100.0);
}

TEST(GpuDevice, BadDeviceIsAnErrorNotACrash) {
  gpu::DeviceInfo info;
  EXPECT_NE(gpu::query_device(1 << 20, info), cudaSuccess);
}

}  // namespace
}  // namespace kvq
