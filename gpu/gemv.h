#pragma once
// Fused dequantize + GEMV on the inner and outer layouts, and fp16 baselines in the same harness.
// Inner grouping puts each group along the reduction axis, so a group costs one multiply
// by its scale: |s| * sum(f_i * w_i) + z_eff * sum(w_i) (core/packed.h). Outer grouping (KIVI's
// per-channel keys and per-token values) puts it across the reduction, so the scale multiplies
// the vector's entry once per group instead (gpu/scores_outer.cu, gpu/outputs_outer.cu). Query
// heads that share a kv head (GQA) are computed from one read of its codes.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "gpu/region.h"

namespace kvq::gpu {

// Which kernel computes a product: automatic picks per shape as measured on the H100 (docs/PERF.md);
// the others force one, for comparison in one benchmark run and so that tests check both.
enum class GemvKernel { automatic, tensor_cores, cuda_cores };

struct ScoresParams {
  // Keys: `regions` regions of `shape.tokens` tokens; channel-axis groups for scores_inner, token-axis
  // groups for scores_outer.
  DeviceRegions keys;
  // queries: [regions][group][head_dim] fp32 (key normalization already folded in), device.
  const float* queries = nullptr;
  int group = 1;  // query heads per kv head (1..8)
  // scores: [regions][group][tokens] fp32 = q . k^ (no 1/sqrt(d)), device.
  float* scores = nullptr;
  // Optional token scales (rotation family): [regions][tokens] fp32, each score multiplied by its
  // token's scale; null: none. Rotated keys take queries rotated alike (gpu/rotate.h).
  const float* token_scale = nullptr;
  // automatic and tensor_cores: scores_inner takes the lane-owned tensor-core kernel (gpu/scores_mma.h)
  // for group 1, the heads-in-B one (gpu/scores_heads.h) for GQA groups, the staged one
  // (gpu/scores_staged.h) for GQA shapes that one does not take, CUDA cores where none supports the
  // shape; scores_outer as said below.
  GemvKernel kernel = GemvKernel::automatic;
  // Set where the previous kernel in the stream leaves memory idle (the attention step's merge before
  // the next step's keys): the ring (scores_mma's long runs of 3-bit keys) then names each warp's
  // first unit to L2 before it waits for that kernel, scores_outer_mma (KIVI's keys) each warp's first
  // tile. Off where that kernel streams memory itself: after a GEMV the prefetch made the keys 4.8-5.5%
  // slower at N = 16384 (H100, docs/PERF.md). The other kernels ignore it (scores_mma's short runs are
  // prefetched either way).
  bool prefetch_first_units = false;
};

struct OutputsParams {
  // Values: token-axis groups for outputs_inner, channel-axis groups for outputs_outer.
  DeviceRegions values;
  // probs: [regions][group][tokens] fp32, device.
  const float* probs = nullptr;
  int group = 1;
  // outputs: [regions][group][head_dim] fp32 = p . v^, device.
  float* outputs = nullptr;
  // Scratch for the split-sequence partial sums: [splits][regions][group][head_dim] floats.
  float* partial = nullptr;
  int splits = 1;  // sequence splits, summed in order by a second pass (deterministic)
  // Optional token scales: [regions][tokens] fp32, folded into the probabilities; null: none.
  // Rotated values give rotated outputs: rotate them back with gpu::rotate_rows (inverse).
  const float* token_scale = nullptr;
  // outputs_outer only, for the outer attention (gpu/attention.h): given row_stats ([regions][group][2]
  // fp32, row r * group + h's softmax max m first), probs holds raw scores s and each weighs
  // e^(score_scale s - m), the unnormalized softmax, with no pass writing it; null: probs are weights.
  const float* row_stats = nullptr;
  float score_scale = 1.0f;
  // automatic and tensor_cores: outputs_inner takes the tensor-core kernels (gpu/outputs_mma.h: lane-owned
  // tiles for one head, heads in B's columns for GQA groups) where they support the shape, else CUDA
  // cores; outputs_outer as said below.
  GemvKernel kernel = GemvKernel::automatic;
};

// fp16 baselines: keys/values [regions][tokens][head_dim] half.
struct Fp16Params {
  const __half* cache = nullptr;
  int regions = 1, tokens = 0, head_dim = 128, group = 1;
  const float* vectors = nullptr;  // queries [regions][group][head_dim] or probs [regions][group][tokens]
  float* out = nullptr;            // scores [regions][group][tokens] or outputs [regions][group][head_dim]
  float* partial = nullptr;        // outputs: [splits][regions][group][head_dim]
  int splits = 1;
};

// Each returns the first CUDA error, or cudaErrorInvalidValue for an unsupported shape
// (head_dim 64 or 128; bits 2, 3, 4, 8; group sizes 16, 32, 64, 128; GQA group 1..8).
// Inner layouts: channel-axis keys for scores, token-axis values for outputs.
cudaError_t scores_inner(const ScoresParams& params, cudaStream_t stream = nullptr);
cudaError_t outputs_inner(const OutputsParams& params, cudaStream_t stream = nullptr);
// Outer layouts: token-axis keys for scores, channel-axis values for outputs. automatic and
// tensor_cores take the tensor-core kernel where it supports the shape (gpu/scores_outer_mma.h,
// gpu/outputs_outer_mma.h), else CUDA cores. The *_supported predicates say which shapes they take.
cudaError_t scores_outer(const ScoresParams& params, cudaStream_t stream = nullptr);
cudaError_t outputs_outer(const OutputsParams& params, cudaStream_t stream = nullptr);
bool scores_outer_supported(const RegionShape& shape, int group);
bool outputs_outer_supported(const RegionShape& shape, int group);
cudaError_t scores_fp16(const Fp16Params& params, cudaStream_t stream = nullptr);
cudaError_t outputs_fp16(const Fp16Params& params, cudaStream_t stream = nullptr);

// Splits for outputs_inner/outputs_fp16 that fill the device about `waves` times.
int output_splits(int regions, int tokens, int device_multiprocessors);

}  // namespace kvq::gpu
