#pragma once
// The cuda backend of kvq bench (ablations/latency.h), built when KVQ_CUDA is ON: one cell of the
// latency grid timed on the GPU kernels of gpu/, with CUDA events, a warm-up and caches rotated over
// at least 4x the L2, so that every call reads the cache from HBM.
#include <cstddef>
#include <cstdint>
#include <string>

#include "ablations/latency.h"
#include "core/spec.h"

namespace kvq::ablations {

struct CudaTiming {
  double us = 0;          // median of the repeats, per call
  std::size_t bytes = 0;  // cache bytes one call must read (quantized regions + fp16 windows)
};

// Why `kernel` (qk, pv, attention) has no CUDA path for `spec` (empty when it has one): fp16 caches,
// and quantized caches with channel-axis keys and token-axis values (InnerQ's inner layouts) without
// rotations or codebooks; the fused attention for the bit widths gpu::attention_inner_bits lists.
std::string cuda_unsupported(const CacheSpec& spec, const std::string& kernel);

// Times `kernel` (qk, pv, attention) for `spec` on `shape` with `tokens` tokens. Throws kvq::Error
// on a CUDA failure (naming the call) or when no device is present.
CudaTiming time_cuda(const LatencyShape& shape, int tokens, const CacheSpec& spec, const std::string& kernel, int repeats,
                     std::uint64_t seed);

// Device-to-device copy bandwidth (bytes read + written per second) and the device's name.
double cuda_copy_bandwidth(std::string& device_name);

}  // namespace kvq::ablations
