#pragma once
// One tensor (K or V) of `regions` regions (batch x kv heads) as a streaming cache on the device, with
// cpu::TensorCache's windows and rules (cpu_ref/tensor_cache.h, docs/SPEC.md "Windows"):
//   [ sink: first S tokens, fp16 | quantized region | recent: fp16 ]
//  - prefill: after the sink, keep min(R, rest) tokens recent, then shrink the recent window until the
//    quantized count is a multiple of the flush size F;
//  - decode: each new token enters the recent window; when it holds R + F tokens, the oldest F are
//    quantized (a flush: gpu::pack appending to the region).
// Quantized tokens are read as fp16, like the windows hold them. Key normalization: f_c =
// fp16(sqrt(max_t |K[t,c]|)) per region over the first quantized batch, then frozen; the region holds
// K / f, and products take f into the query (q_c f_c: norm()). Codes, scales, zero points and windows
// are bit-identical to cpu::TensorCache's on the same rows.
// Integer modes (sym, asym, hybrid) without rotation or token scale.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/spec.h"
#include "gpu/region.h"

namespace kvq::gpu {

class TensorCache {
 public:
  // Device memory for `capacity` tokens per region. Check status() before use: a spec this class does
  // not take, or a failed allocation, leaves it unusable.
  TensorCache(const TensorSpec& spec, int regions, int head_dim, int sink, int recent, bool key_norm, int capacity);
  ~TensorCache();
  TensorCache(const TensorCache&) = delete;
  TensorCache& operator=(const TensorCache&) = delete;

  cudaError_t status() const { return status_; }
  // Why status() is not cudaSuccess, in a line ("" when it is).
  const std::string& why() const { return why_; }

  // rows: [regions][count][head_dim] fp32, device. Only on an empty cache; count <= capacity.
  cudaError_t prefill(const float* rows, int count, cudaStream_t stream = nullptr);
  // rows: [regions][head_dim] fp32, device: one new token per region. cudaErrorInvalidValue when full.
  cudaError_t append(const float* rows, cudaStream_t stream = nullptr);

  int size() const { return size_; }
  int sink_tokens() const { return sink_count_; }
  int quantized_tokens() const { return quantized_; }
  int recent_tokens() const { return recent_count_; }

  // The quantized tokens (shape.tokens = quantized_tokens(); regions at capacity strides).
  DeviceRegions region() const;
  // Windows: [regions][window_stride()][head_dim] fp16: the sink's rows, then the recent window's,
  // window_tokens() rows in all per region.
  const __half* window() const { return window_; }
  int window_stride() const { return window_stride_; }
  int window_tokens() const { return sink_count_ + recent_count_; }
  // Key-normalization factors, [regions][head_dim] fp32 (fp16 values), device; null before the first
  // quantization and without key normalization.
  const float* norm() const { return norm_ready_ ? norm_ : nullptr; }

 private:
  // Quantizes `count` rows per region from src (fp32 rows or fp16 window rows, `stride` rows apart per
  // region, starting at row `first`) onto the region.
  cudaError_t quantize(const void* src, bool src_half, int stride, int first, int count, cudaStream_t stream);

  TensorSpec spec_;
  int regions_, d_, sink_, recent_, flush_, capacity_;
  bool key_norm_;
  cudaError_t status_ = cudaSuccess;
  std::string why_;
  int size_ = 0, sink_count_ = 0, quantized_ = 0, recent_count_ = 0;
  RegionShape shape_;
  DeviceRegions region_;
  std::uint32_t* zero_count_ = nullptr;
  __half* window_ = nullptr;
  int window_stride_ = 0;
  float* norm_ = nullptr;
  bool norm_ready_ = false;
  float* staging_ = nullptr;  // [regions][max(capacity, flush)][head_dim] fp32: the quantizer's input
  __half* shift_ = nullptr;   // [regions][recent][head_dim]: the recent rows kept by a flush, moved down
};

}  // namespace kvq::gpu
