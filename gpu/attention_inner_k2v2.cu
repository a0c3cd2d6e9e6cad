// Fused attention instances for 2-bit keys and 2-bit values (gpu/attention_lane.cuh for one query
// head per kv head and fp16 metadata, else gpu/attention_inner.cuh).
#include "gpu/attention_inner.cuh"
#include "gpu/attention_lane.cuh"

namespace kvq::gpu::attention_detail {

cudaError_t inner_k2v2(const AttentionParams& p, const Parts& parts, int& used, bool& windows_taken, cudaStream_t stream) {
  windows_taken = false;
  if (lane_attention_supported(p)) return lane_by_shape<2, 2>(p, parts, used, windows_taken, stream);
  KVQ_DISPATCH_HEAD_DIM(p.keys.shape.head_dim, D, KVQ_DISPATCH_GROUP(p.group, H, return (launch_inner<2, 2, D, H>(p, parts, used, stream));))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu::attention_detail
