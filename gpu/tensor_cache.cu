#include "gpu/tensor_cache.h"

#include <algorithm>

#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/pack.h"
#include "gpu/spec_shape.h"

namespace kvq::gpu {
namespace {

// Tokens quantized per pack call in a prefill (bounds the fp32 staging buffer; a multiple of every
// token-axis group size, so pieces append whole groups).
constexpr int kPiece = 2048;

// Row i of region r in a source of fp32 rows or fp16 window rows, `stride` rows per region, as the
// fp16 value a cache holds.
__device__ __forceinline__ float held(const void* src, bool half, long long r, int stride, int row, int d, int c) {
  const long long i = (r * stride + row) * d + c;
  return half ? __half2float(static_cast<const __half*>(src)[i]) : __half2float(__float2half_rn(static_cast<const float*>(src)[i]));
}

// window[r][first_out + i] = fp16(rows[r][first + i]) for i < count.
__global__ void store_window(const float* rows, int stride, int first, int count, __half* window, int window_stride, int first_out, int d) {
  wait_for_prior_kernels();
  const long long r = blockIdx.y;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < static_cast<long long>(count) * d; i += gridDim.x * blockDim.x) {
    const long long t = i / d, c = i % d;
    window[(r * window_stride + first_out + t) * d + c] = __float2half_rn(rows[(r * stride + first + t) * d + c]);
  }
}

// norm[r][c] = fp16(sqrt(max_t |x[t][c]|)) over the held values of `count` rows; 1 for an all-zero
// (or non-finite) channel, as cpu::TensorCache.
__global__ void key_norm_factors(const void* src, bool half, int stride, int first, int count, int d, float* norm) {
  wait_for_prior_kernels();
  const long long r = blockIdx.y;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= d) return;
  float m = 0.0f;
  for (int t = 0; t < count; ++t) m = fmaxf(m, fabsf(held(src, half, r, stride, first + t, d, c)));
  float f = __half2float(__float2half_rn(sqrtf(m)));
  if (!(f > 0.0f) || !isfinite(f)) f = 1.0f;
  norm[r * d + c] = f;
}

// staging[r][t] = held(x) / norm (the quantizer's input), for `count` rows.
__global__ void stage_rows(const void* src, bool half, int stride, int first, int count, int d, const float* norm, float* staging) {
  wait_for_prior_kernels();
  const long long r = blockIdx.y;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < static_cast<long long>(count) * d; i += gridDim.x * blockDim.x) {
    const int t = static_cast<int>(i / d), c = static_cast<int>(i % d);
    float x = held(src, half, r, stride, first + t, d, c);
    if (norm) x /= norm[r * d + c];
    staging[(r * count + t) * d + c] = x;
  }
}

unsigned blocks_for(long long elements) { return static_cast<unsigned>(std::min<long long>(1024, (elements + 255) / 256)); }

}  // namespace

TensorCache::TensorCache(const TensorSpec& spec, int regions, int head_dim, int sink, int recent, bool key_norm, int capacity)
    : spec_(spec), regions_(regions), d_(head_dim), sink_(sink), recent_(recent), flush_(spec.flush), capacity_(capacity), key_norm_(key_norm) {
  auto refuse = [&](const char* why) {
    status_ = cudaErrorInvalidValue;
    why_ = why;
  };
  if (spec.mode != Mode::sym && spec.mode != Mode::asym && spec.mode != Mode::hybrid) { refuse("gpu::TensorCache takes integer modes (sym, asym, hybrid)"); return; }
  if (spec.rotation != Rotation::none || spec.token_scale != TokenScale::none) { refuse("gpu::TensorCache takes no rotation or token scale"); return; }
  if (regions < 1 || head_dim % 32 != 0 || head_dim < 32 || sink < 0 || recent < 0 || capacity < 1 || flush_ < 1)
    { refuse("gpu::TensorCache needs regions >= 1, head_dim a multiple of 32, sink and recent >= 0, capacity and flush >= 1"); return; }
  if (spec.group_axis == GroupAxis::token && flush_ % spec.group_size != 0) { refuse("token-axis groups need a flush size that is a multiple of group_size"); return; }
  shape_ = region_shape(spec, 0, head_dim);
  const int align = std::max(32, spec.group_size);
  shape_.capacity = (capacity + align - 1) / align * align;
  const std::size_t meta = shape_.meta_fp16 ? 2 : 4, n = static_cast<std::size_t>(regions);
  window_stride_ = sink + recent + flush_;
  auto get = [&](void** p, std::size_t bytes) {
    if (status_ == cudaSuccess) status_ = cudaMalloc(p, std::max<std::size_t>(1, bytes));
    if (status_ != cudaSuccess && why_.empty()) why_ = "gpu::TensorCache: device allocation failed";
  };
  get(reinterpret_cast<void**>(&region_.codes), sizeof(std::uint32_t) * n * shape_.code_stride());
  get(&region_.scales, meta * n * shape_.group_stride());
  get(&region_.zeros, meta * n * shape_.group_stride());
  get(reinterpret_cast<void**>(&region_.zero_offset), sizeof(std::uint32_t) * n);
  get(reinterpret_cast<void**>(&region_.zero_base), sizeof(std::uint32_t) * n * shape_.zero_block_stride());
  get(reinterpret_cast<void**>(&zero_count_), sizeof(std::uint32_t) * n);
  get(reinterpret_cast<void**>(&window_), sizeof(__half) * n * window_stride_ * head_dim);
  if (key_norm) get(reinterpret_cast<void**>(&norm_), sizeof(float) * n * head_dim);
  get(reinterpret_cast<void**>(&staging_), sizeof(float) * n * std::max(std::min(capacity, kPiece), flush_) * head_dim);
  get(reinterpret_cast<void**>(&shift_), sizeof(__half) * n * std::max(1, recent) * head_dim);
  region_.regions = regions;
}

TensorCache::~TensorCache() {
  for (void* p : {static_cast<void*>(region_.codes), region_.scales, region_.zeros, static_cast<void*>(region_.zero_offset),
                  static_cast<void*>(region_.zero_base), static_cast<void*>(zero_count_), static_cast<void*>(window_), static_cast<void*>(norm_),
                  static_cast<void*>(staging_), static_cast<void*>(shift_)})
    cudaFree(p);
}

DeviceRegions TensorCache::region() const {
  DeviceRegions r = region_;
  r.shape = shape_;
  r.shape.tokens = quantized_;
  return r;
}

cudaError_t TensorCache::quantize(const void* src, bool src_half, int stride, int first, int count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (key_norm_ && !norm_ready_) {
    // Frozen on the first batch that is quantized.
    KVQ_CUDA_TRY(launch_kernel(key_norm_factors, dim3(static_cast<unsigned>((d_ + 127) / 128), regions_), dim3(128), 0, stream, src, src_half, stride, first,
                               count, d_, norm_));
    norm_ready_ = true;
  }
  for (int done = 0; done < count; done += kPiece) {
    const int n = std::min(kPiece, count - done);
    KVQ_CUDA_TRY(launch_kernel(stage_rows, dim3(blocks_for(static_cast<long long>(n) * d_), regions_), dim3(256), 0, stream, src, src_half, stride, first + done,
                               n, d_, key_norm_ ? norm_ : nullptr, staging_));
    PackParams p;
    p.rows = staging_;
    p.out = region_;
    p.out.shape = shape_;
    p.out.shape.tokens = quantized_ + n;
    p.at = quantized_;
    p.zero_count = zero_count_;
    KVQ_CUDA_TRY(pack(p, stream));
    quantized_ += n;
  }
  return cudaSuccess;
}

cudaError_t TensorCache::prefill(const float* rows, int count, cudaStream_t stream) {
  KVQ_CUDA_TRY(status_);
  if (size_ != 0 || count < 0 || count > capacity_ || (count > 0 && rows == nullptr)) return cudaErrorInvalidValue;
  const int sink = std::min(sink_, count), rest = count - sink;
  if (sink > 0) {
    KVQ_CUDA_TRY(launch_kernel(store_window, dim3(blocks_for(static_cast<long long>(sink) * d_), regions_), dim3(256), 0, stream, rows, count, 0, sink, window_,
                               window_stride_, 0, d_));
  }
  int quantize_count = 0;
  if (rest > recent_) quantize_count = std::min((rest - recent_ + flush_ - 1) / flush_ * flush_, rest / flush_ * flush_);
  KVQ_CUDA_TRY(quantize(rows, false, count, sink, quantize_count, stream));
  const int recent = rest - quantize_count;
  if (recent > 0) {
    KVQ_CUDA_TRY(launch_kernel(store_window, dim3(blocks_for(static_cast<long long>(recent) * d_), regions_), dim3(256), 0, stream, rows, count,
                               sink + quantize_count, recent, window_, window_stride_, sink, d_));
  }
  sink_count_ = sink;
  recent_count_ = recent;
  size_ = count;
  return cudaSuccess;
}

cudaError_t TensorCache::append(const float* rows, cudaStream_t stream) {
  KVQ_CUDA_TRY(status_);
  if (size_ >= capacity_ || rows == nullptr) return cudaErrorInvalidValue;
  const bool to_sink = sink_count_ < sink_;
  const int row = to_sink ? sink_count_ : sink_ + recent_count_;
  KVQ_CUDA_TRY(launch_kernel(store_window, dim3(1, regions_), dim3(128), 0, stream, rows, 1, 0, 1, window_, window_stride_, row, d_));
  ++size_;
  if (to_sink) {
    ++sink_count_;
    return cudaSuccess;
  }
  if (++recent_count_ < recent_ + flush_) return cudaSuccess;
  // Flush: quantize the oldest F recent rows, then move the R that stay down to the sink's end.
  KVQ_CUDA_TRY(quantize(window_, true, window_stride_, sink_, flush_, stream));
  recent_count_ -= flush_;
  if (recent_count_ > 0) {
    const std::size_t row_bytes = sizeof(__half) * d_, pitch = row_bytes * window_stride_, kept = row_bytes * recent_count_;
    KVQ_CUDA_TRY(cudaMemcpy2DAsync(shift_, kept, window_ + static_cast<std::size_t>(sink_ + flush_) * d_, pitch, kept, regions_,
                                   cudaMemcpyDeviceToDevice, stream));
    KVQ_CUDA_TRY(cudaMemcpy2DAsync(window_ + static_cast<std::size_t>(sink_) * d_, pitch, shift_, kept, kept, regions_, cudaMemcpyDeviceToDevice, stream));
  }
  return cudaSuccess;
}

}  // namespace kvq::gpu
