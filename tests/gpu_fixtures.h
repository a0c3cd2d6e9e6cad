#pragma once
// Shared helpers of the GPU tests: device buffers, packed regions made by gpu::pack with the CPU
// reference's dequantized rows beside them, and the normalized error against double precision.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "core/spec.h"
#include "cpu_ref/packed_region.h"
#include "gpu/device.h"
#include "gpu/gemv.h"
#include "gpu/pack.h"
#include "gpu/region.h"
#include "gpu/spec_shape.h"

namespace kvq::test {

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

// An integer-mode tensor spec with the sweep's knobs (the rest at their defaults).
inline TensorSpec swept_spec(Mode mode, int bits, bool channel, int group_size, bool fp16) {
  TensorSpec spec;
  spec.mode = mode;
  spec.bits = bits;
  spec.group_axis = channel ? GroupAxis::channel : GroupAxis::token;
  spec.group_size = group_size;
  spec.meta = fp16 ? MetaPrecision::fp16 : MetaPrecision::fp32;
  return spec;
}

// A parameterized GPU test: skipped where no CUDA device exists.
template <typename Param>
class GpuSweep : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

template <typename T>
T* upload(const std::vector<T>& host) {
  T* device = nullptr;
  EXPECT_EQ(cudaMalloc(&device, std::max<std::size_t>(1, host.size()) * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return device;
}
template <typename T>
std::vector<T> download(const T* device, std::size_t n) {
  std::vector<T> host(n);
  EXPECT_EQ(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return host;
}

// Device regions of one shape at its allocated size (capacity), freed with the object.
struct DeviceCache {
  gpu::DeviceRegions dev;
  DeviceCache(const gpu::RegionShape& s, int regions) {
    dev.shape = s;
    dev.regions = regions;
    const std::size_t meta = s.meta_fp16 ? 2 : 4;
    EXPECT_EQ(cudaMalloc(&dev.codes, sizeof(std::uint32_t) * regions * std::max<long long>(1, s.code_stride())), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&dev.scales, meta * regions * std::max<long long>(1, s.group_stride())), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&dev.zeros, meta * regions * std::max<long long>(1, s.group_stride())), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&dev.zero_offset, sizeof(std::uint32_t) * regions), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&dev.zero_base, sizeof(std::uint32_t) * regions * std::max<long long>(1, s.zero_block_stride())), cudaSuccess);
  }
  DeviceCache(const DeviceCache&) = delete;
  DeviceCache& operator=(const DeviceCache&) = delete;
  ~DeviceCache() {
    for (void* p : std::initializer_list<void*>{dev.codes, dev.scales, dev.zeros, dev.zero_offset, dev.zero_base}) cudaFree(p);
  }
};

// `regions` regions of `rows` ([regions][tokens][head_dim]) packed on the device by gpu::pack, and the
// CPU reference's dequantization of the same rows ([regions][tokens][head_dim]).
struct PackedPair {
  DeviceCache cache;
  std::vector<float> dequantized;
  PackedPair(const TensorSpec& t, const std::vector<float>& rows, int regions, int tokens, int head_dim)
      : cache(gpu::region_shape(t, tokens, head_dim), regions), dequantized(rows.size()) {
    float* d_rows = upload(rows);
    EXPECT_EQ(gpu::pack({d_rows, cache.dev}), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    cudaFree(d_rows);
    for (int r = 0; r < regions; ++r) {
      cpu::PackedRegion region(t, head_dim);
      const std::size_t at = static_cast<std::size_t>(r) * tokens * head_dim;
      region.append(rows.data() + at, tokens);
      if (tokens > 0) region.dequantize(dequantized.data() + at);
    }
  }
};

// `regions` with a copy of their scales that starts `by` bytes off 16, freed with the object: the
// kernels that copy metadata with cp.async or wide loads must take it from where it starts.
struct ScalesMoved {
  gpu::DeviceRegions dev;
  std::uint8_t* scales = nullptr;
  ScalesMoved(const gpu::DeviceRegions& regions, int by) : dev(regions) {
    const std::size_t bytes = (regions.shape.meta_fp16 ? 2 : 4) * regions.regions * regions.shape.group_stride();
    EXPECT_EQ(cudaMalloc(&scales, bytes + 16), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(scales + by, regions.scales, bytes, cudaMemcpyDeviceToDevice), cudaSuccess);
    dev.scales = scales + by;
  }
  ScalesMoved(const ScalesMoved&) = delete;
  ScalesMoved& operator=(const ScalesMoved&) = delete;
  ~ScalesMoved() { cudaFree(scales); }
};

// gpu::outputs_inner (token-axis values) or gpu::outputs_outer (channel-axis) over `values` into a device buffer [regions][group][head_dim] (with its split
// scratch), both freed with the object; status is the launcher's result.
struct OutputsRun {
  float* out = nullptr;
  float* partial = nullptr;
  std::size_t count = 0;
  cudaError_t status = cudaSuccess;
  OutputsRun(const gpu::DeviceRegions& values, const float* probs, int group, int splits, gpu::GemvKernel kernel,
             const float* token_scale = nullptr)
      : count(static_cast<std::size_t>(values.regions) * group * values.shape.head_dim) {
    EXPECT_EQ(cudaMalloc(&out, sizeof(float) * count), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&partial, sizeof(float) * splits * count), cudaSuccess);
    gpu::OutputsParams op;
    op.values = values;
    op.probs = probs;
    op.group = group;
    op.outputs = out;
    op.partial = partial;
    op.splits = splits;
    op.token_scale = token_scale;
    op.kernel = kernel;
    status = values.shape.channel_axis ? gpu::outputs_outer(op) : gpu::outputs_inner(op);
  }
  OutputsRun(const OutputsRun&) = delete;
  OutputsRun& operator=(const OutputsRun&) = delete;
  ~OutputsRun() {
    cudaFree(out);
    cudaFree(partial);
  }
  std::vector<float> host() const { return download(out, count); }
};

// sum (got - ref)^2 / sum ref^2.
inline double nmse(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) num += (got[i] - ref[i]) * (got[i] - ref[i]), den += ref[i] * ref[i];
  return num / std::max(den, 1e-30);
}

}  // namespace kvq::test
