#pragma once
// Internal to gpu/attention*.cu: the parts a split sequence writes (unnormalized output o, running max
// m and sum l per head), and the fused attention over an InnerQ cache, one translation unit per pair of
// key/value bit widths (attention_inner_k*v*.cu) so that they compile in parallel.
#include "gpu/attention.h"

namespace kvq::gpu::attention_detail {

struct Parts {
  float* o;   // [parts][regions][group][D]
  float* ml;  // [parts][regions][group][2]
  int regions, group, head_dim;
  __host__ __device__ long long row(int part, int r, int h) const { return (static_cast<long long>(part) * regions + r) * group + h; }
};

inline Parts parts_of(float* scratch, int regions, int group, int head_dim, int splits) {
  return {scratch, scratch + static_cast<long long>(splits + 1) * regions * group * head_dim, regions, group, head_dim};
}

// Launches the fused kernel over p's quantized tokens into parts [0, used); one per built bit pair.
cudaError_t inner_k3v2(const AttentionParams& p, const Parts& parts, int& used, cudaStream_t stream);
cudaError_t inner_k3v3(const AttentionParams& p, const Parts& parts, int& used, cudaStream_t stream);
cudaError_t inner_k2v2(const AttentionParams& p, const Parts& parts, int& used, cudaStream_t stream);
cudaError_t inner_k4v4(const AttentionParams& p, const Parts& parts, int& used, cudaStream_t stream);

}  // namespace kvq::gpu::attention_detail
