// Fused decode attention (gpu/attention.h). Each part writes its unnormalized output o, its running
// max m and its sum l per head; merge_parts combines them: M = max m_s, out = sum o_s e^(m_s - M) /
// sum l_s e^(m_s - M). Scratch layout: o [parts][regions][group][head_dim], then ml [parts][regions][group][2].
#include <algorithm>
#include <cmath>

#include "gpu/attention.h"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/attention_parts.h"
#include "gpu/fp16_part.cuh"
#include "gpu/gemv.h"
#include "gpu/inner_stage.cuh"
#include "gpu/outputs_mma.h"
#include "gpu/reduce.cuh"

namespace kvq::gpu {

using namespace attention_detail;

namespace {

// One block merges the parts of kMergeThreads / head_dim rows (a row: one query head of one region).
constexpr int kMergeThreads = 256;
constexpr int kMergeRows = kMergeThreads / 64;  // head_dim 64 or 128

// Batch parts at a time, with one wait: every load of a batch (each thread's o of every part; the
// rows' (m, l) into shared memory) goes out before any arithmetic. Then one warp per row takes the
// batch's max (a later batch's larger max rescales what came before), the weights e^(m_k - m) and the
// row's sum l, and every thread adds its weighted o in part order. (Two passes of 8 parts per thread,
// max then sums, waited six times over the paper shape's 17 parts: 7.4 us, Nsight.) Up to Batch parts,
// the adds are those of one pass over the parts' max, in part order.
template <int Batch>
__global__ void __launch_bounds__(kMergeThreads) merge_parts(Parts p, int parts, float* out) {
  static_assert(Batch % 32 == 0 || 32 % Batch == 0, "a warp per row, a lane per part or a part per lane");
  constexpr int kPerLane = (Batch + 31) / 32;
  wait_for_prior_kernels();
  __shared__ float ml[kMergeRows][Batch][2], weight[kMergeRows][Batch], factor[kMergeRows], sum[kMergeRows];
  const int d = p.head_dim, rows = kMergeThreads / d, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const long long all_rows = static_cast<long long>(p.regions) * p.group, n = all_rows * d, row0 = blockIdx.x * static_cast<long long>(rows);
  const long long i = blockIdx.x * static_cast<long long>(kMergeThreads) + threadIdx.x;
  const bool mine = i < n;  // the others still load and meet the barriers
  const int row = threadIdx.x / d;
  float m = -INFINITY, l = 0.0f, o = 0.0f;  // m, l: the row's, in its warp; o: this thread's
  for (int s0 = 0; s0 < parts; s0 += Batch) {
    for (int t = threadIdx.x; t < rows * 2 * Batch; t += kMergeThreads) {
      const int t_row = t / (2 * Batch), k = t / 2 % Batch, which = t % 2;
      const bool live = row0 + t_row < all_rows && s0 + k < parts;
      ml[t_row][k][which] = live ? p.ml[2 * p.row(s0 + k, row0 + t_row) + which] : (which ? 0.0f : -INFINITY);
    }
    float os[Batch];
    const float* o_at = p.o + p.row(s0, 0) * d + i;  // this thread's (row, channel) in part s0
#pragma unroll
    for (int k = 0; k < Batch; ++k, o_at += n) os[k] = mine && s0 + k < parts ? *o_at : 0.0f;
    __syncthreads();
    if (warp < rows) {
      float mk[kPerLane], m_new = m;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int k = 32 * j + lane;
        mk[j] = k < Batch ? ml[warp][k][0] : -INFINITY;
        m_new = fmaxf(m_new, mk[j]);
      }
      for (int off = 16; off > 0; off >>= 1) m_new = fmaxf(m_new, __shfl_xor_sync(0xffffffffu, m_new, off));
      const float corr = m_new == -INFINITY ? 1.0f : __expf(m - m_new);  // 0 where nothing came before
#pragma unroll
      for (int j = 0; j < kPerLane; ++j)
        if (32 * j + lane < Batch) weight[warp][32 * j + lane] = mk[j] == -INFINITY ? 0.0f : __expf(mk[j] - m_new);
      m = m_new;
      __syncwarp();
      if (lane == 0) {
        l *= corr;
        for (int k = 0; k < Batch; ++k) l += weight[warp][k] * ml[warp][k][1];
        factor[warp] = corr, sum[warp] = l;
      }
    }
    __syncthreads();
    o *= factor[row];
#pragma unroll
    for (int k = 0; k < Batch; ++k) o += weight[row][k] * os[k];
    __syncthreads();  // before the next batch's writes
  }
  if (mine) out[i] = sum[row] > 0.0f ? o / sum[row] : 0.0f;
}

// Part `part0 + blockIdx.x` of region blockIdx.y covers tokens [blockIdx.x * per_part, +per_part).
template <int D, int Group>
__global__ void __launch_bounds__(128) fp16_attention_kernel(const __half* keys, const __half* values, int tokens, int per_part, const float* q,
                                                             float scale, Parts parts, int part0) {
  wait_for_prior_kernels();
  __shared__ Fp16Smem<D, Group> sh;
  const int r = blockIdx.y, a = blockIdx.x * per_part, b = min(tokens, a + per_part);
  const long long base = static_cast<long long>(r) * tokens * D;
  fp16_part<D, Group>(keys + base, values + base, a, b, q + static_cast<long long>(r) * Group * D, scale, parts, part0 + blockIdx.x, r, sh);
}

template <int D, int Group>
cudaError_t launch_fp16(const __half* keys, const __half* values, int regions, int tokens, int parts_wanted, const float* q, float scale, Parts parts,
                        int part0, int& used, cudaStream_t stream) {
  const int per_part = std::max(1, (tokens + parts_wanted - 1) / parts_wanted);
  used = std::max(1, (tokens + per_part - 1) / per_part);
  return launch_kernel(fp16_attention_kernel<D, Group>, dim3(static_cast<unsigned>(used), static_cast<unsigned>(regions)), dim3(128), 0, stream, keys, values,
                       tokens, per_part, q, scale, parts, part0);
}

cudaError_t merge(Parts parts, int count, float* outputs, cudaStream_t stream) {
  if (parts.head_dim != 64 && parts.head_dim != 128) return cudaErrorInvalidValue;  // merge_parts' rows per block
  const long long n = static_cast<long long>(parts.regions) * parts.group * parts.head_dim;
  const dim3 grid(static_cast<unsigned>((n + kMergeThreads - 1) / kMergeThreads)), block(kMergeThreads);
  // The smallest batch that holds every part: the loads of the parts beyond the count would only be
  // skipped, one by one.
  if (count <= 8) return launch_kernel(merge_parts<8>, grid, block, 0, stream, parts, count, outputs);
  if (count <= 16) return launch_kernel(merge_parts<16>, grid, block, 0, stream, parts, count, outputs);
  if (count <= 32) return launch_kernel(merge_parts<32>, grid, block, 0, stream, parts, count, outputs);
  return launch_kernel(merge_parts<64>, grid, block, 0, stream, parts, count, outputs);
}

// Unfused: the scores into p.scores_scratch, then the values' kernel running the softmax over them and
// writing parts [0, used), the last of them the windows where it took them (one query head per kv head).
cudaError_t unfused_inner(const AttentionParams& p, const Parts& parts, int& used, bool& windows_taken, cudaStream_t stream) {
  // The keys follow the merge (or the caller's window rows), which leaves memory idle.
  KVQ_CUDA_TRY(scores_inner({p.keys, p.queries, p.group, p.scores_scratch, p.key_token_scale, GemvKernel::automatic, /*prefetch_first_units=*/true}, stream));
  OutputsParams o;
  o.values = p.values, o.probs = p.scores_scratch, o.group = p.group, o.splits = p.splits, o.token_scale = p.value_token_scale;
  return outputs_softmax_mma(o, p.scale, parts, {p.window_keys, p.window_values, p.window_queries, p.window}, used, windows_taken, stream);
}

// A row's softmax statistics over scale * s: its max m and sum l of e^(scale s - m), returned to every
// thread of the block (all of it must call it). One read: each thread keeps its own running (m, l),
// rescaled as its max grows, over four loads in flight at a time, and the block merges them.
__device__ void row_max_sum(const float* s, int tokens, float scale, float* red, float& m, float& l) {
  float mt = -INFINITY, lt = 0.0f;
  const int stride = static_cast<int>(blockDim.x);
  for (int i0 = threadIdx.x; i0 < tokens; i0 += 4 * stride) {
    float x[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) x[k] = i0 + k * stride < tokens ? s[i0 + k * stride] * scale : -INFINITY;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (x[k] == -INFINITY) continue;
      if (x[k] > mt) lt = lt * __expf(mt - x[k]) + 1.0f, mt = x[k];
      else lt += __expf(x[k] - mt);
    }
  }
  m = block_reduce(mt, red, MaxOp{});
  l = block_reduce(mt == -INFINITY ? 0.0f : lt * __expf(mt - m), red, SumOp{});
}

__global__ void softmax_kernel(const float* scores, int tokens, float scale, float* probs, __half* probs_fp16) {
  wait_for_prior_kernels();
  __shared__ float red[32];
  const long long row = blockIdx.x;
  const float* s = scores + row * tokens;
  float m, l;
  row_max_sum(s, tokens, scale, red, m, l);
  const float inv = 1.0f / l;
  for (int i = threadIdx.x; i < tokens; i += blockDim.x) {
    const float pr = __expf(s[i] * scale - m) * inv;
    if (probs) probs[row * tokens + i] = pr;
    if (probs_fp16) probs_fp16[row * tokens + i] = __float2half_rn(pr);
  }
}

// Row r * group + h's softmax statistics (m, l) over its scores, as part 0's.
__global__ void row_stats_kernel(const float* scores, int tokens, float scale, Parts parts) {
  wait_for_prior_kernels();
  __shared__ float red[32];
  const int row = blockIdx.x;
  float m, l;
  row_max_sum(scores + static_cast<long long>(row) * tokens, tokens, scale, red, m, l);
  if (threadIdx.x == 0) {
    const long long at = parts.row(0, row);
    parts.ml[2 * at] = m, parts.ml[2 * at + 1] = l;
  }
}

// Outer layouts, unfused, as one part: the keys' GEMV into p.scores_scratch, each row's (m, l) into
// part 0, then the values' GEMV weighing the raw scores as e^(scale s - m) itself (OutputsParams::
// row_stats: no pass writes the probabilities) into part 0's o. Its split sums go through parts 1..
// of o, free until the windows' part is written after it (stream order).
cudaError_t outer_part(const AttentionParams& p, const Parts& parts, cudaStream_t stream) {
  const int tokens = p.keys.shape.tokens, rows = p.keys.regions * p.group;
  KVQ_CUDA_TRY(scores_outer({p.keys, p.queries, p.group, p.scores_scratch, p.key_token_scale, GemvKernel::automatic, /*prefetch_first_units=*/true}, stream));
  KVQ_CUDA_TRY(launch_kernel(row_stats_kernel, dim3(static_cast<unsigned>(rows)), dim3(512), 0, stream, p.scores_scratch, tokens, p.scale, parts));
  OutputsParams o;
  o.values = p.values, o.probs = p.scores_scratch, o.group = p.group, o.splits = p.splits, o.token_scale = p.value_token_scale;
  o.row_stats = parts.ml, o.score_scale = p.scale;  // part 0's rows come first
  o.outputs = parts.o;
  o.partial = parts.o + static_cast<long long>(rows) * parts.head_dim;
  return outputs_outer(o, stream);
}

// The fp16 windows as part `used` (unless the quantized kernel took them), then the merge of every part.
cudaError_t windows_and_merge(const AttentionParams& p, const Parts& parts, int used, bool windows_taken, cudaStream_t stream) {
  int window_parts = 0;
  if (p.window > 0 && !windows_taken) {
    KVQ_DISPATCH_HEAD_DIM(p.keys.shape.head_dim, D, KVQ_DISPATCH_GROUP(p.group, H, KVQ_CUDA_TRY((launch_fp16<D, H>(p.window_keys, p.window_values, p.keys.regions, p.window, 1,
                                                                                                               p.window_queries, p.scale, parts, used, window_parts, stream)));))
  }
  if (used + window_parts == 0) return cudaMemsetAsync(p.outputs, 0, sizeof(float) * parts.regions * parts.group * parts.head_dim, stream);
  return merge(parts, used + window_parts, p.outputs, stream);
}

// params with window_queries resolved (null: the queries), as every kernel below reads it.
AttentionParams with_window_queries(const AttentionParams& params) {
  AttentionParams p = params;
  if (!p.window_queries) p.window_queries = p.queries;
  return p;
}

}  // namespace

bool attention_inner_bits(int key_bits, int value_bits) {
  const int pair = key_bits * 10 + value_bits;
  return pair == 32 || pair == 33 || pair == 22 || pair == 44;
}

int attention_splits(int regions, int tokens, int multiprocessors) {
  const int want = (4 * multiprocessors + regions - 1) / regions;
  return std::max(1, std::min(want, (tokens + stage::kTokens - 1) / stage::kTokens));
}

long long attention_scratch_floats(int regions, int group, int head_dim, int splits) {
  return static_cast<long long>(splits + 1) * regions * group * (head_dim + 2);
}

cudaError_t attention_inner(const AttentionParams& params, cudaStream_t stream) {
  const AttentionParams p = with_window_queries(params);
  const RegionShape &ks = p.keys.shape, &vs = p.values.shape;
  const bool shapes = ks.channel_axis && !vs.channel_axis && stage::supported(ks, p.group) && stage::supported(vs, p.group) && ks.tokens == vs.tokens &&
                      ks.head_dim == vs.head_dim && p.keys.regions == p.values.regions && p.splits >= 1 && p.window >= 0 &&
                      (p.window == 0 || (p.window_keys && p.window_values));
  if (!shapes || !attention_inner_bits(ks.bits, vs.bits)) return cudaErrorInvalidValue;
  const Parts parts = parts_of(p.scratch, p.keys.regions, p.group, ks.head_dim, p.splits);
  int used = 0;
  bool windows_taken = false;  // by a quantized kernel (the one-head kernels share them out among their parts)
  const bool unfused = ks.tokens > 0 && p.scores_scratch && outputs_mma_supported(p.values, p.group) &&
                       (p.route == AttentionRoute::unfused ||
                        (p.route == AttentionRoute::automatic && (p.group > 1 || ks.tokens >= kUnfusedOneHeadTokens)));
  if (unfused) {
    KVQ_CUDA_TRY(unfused_inner(p, parts, used, windows_taken, stream));
  } else if (ks.tokens > 0) {
    switch (ks.bits * 10 + vs.bits) {
      case 32: KVQ_CUDA_TRY(inner_k3v2(p, parts, used, windows_taken, stream)); break;
      case 33: KVQ_CUDA_TRY(inner_k3v3(p, parts, used, windows_taken, stream)); break;
      case 22: KVQ_CUDA_TRY(inner_k2v2(p, parts, used, windows_taken, stream)); break;
      case 44: KVQ_CUDA_TRY(inner_k4v4(p, parts, used, windows_taken, stream)); break;
      default: return cudaErrorInvalidValue;
    }
  }
  return windows_and_merge(p, parts, used, windows_taken, stream);
}

cudaError_t attention_outer(const AttentionParams& params, cudaStream_t stream) {
  const AttentionParams p = with_window_queries(params);
  const RegionShape &ks = p.keys.shape, &vs = p.values.shape;
  const bool shapes = !ks.channel_axis && vs.channel_axis && scores_outer_supported(ks, p.group) && outputs_outer_supported(vs, p.group) &&
                      ks.tokens == vs.tokens && ks.head_dim == vs.head_dim && p.keys.regions == p.values.regions && p.splits >= 1 && p.window >= 0 &&
                      (p.window == 0 || (p.window_keys && p.window_values)) && (ks.tokens == 0 || p.scores_scratch);
  if (!shapes) return cudaErrorInvalidValue;
  const Parts parts = parts_of(p.scratch, p.keys.regions, p.group, ks.head_dim, p.splits);
  if (ks.tokens > 0) KVQ_CUDA_TRY(outer_part(p, parts, stream));
  return windows_and_merge(p, parts, ks.tokens > 0 ? 1 : 0, false, stream);
}

cudaError_t attention_fp16(const Fp16AttentionParams& p, cudaStream_t stream) {
  if (p.group < 1 || p.group > 8 || p.splits < 1 || p.tokens < 0 || (p.head_dim != 64 && p.head_dim != 128)) return cudaErrorInvalidValue;
  const Parts parts = parts_of(p.scratch, p.regions, p.group, p.head_dim, p.splits);
  if (p.tokens == 0) return cudaMemsetAsync(p.outputs, 0, sizeof(float) * parts.regions * parts.group * parts.head_dim, stream);
  int used = 0;
  KVQ_DISPATCH_HEAD_DIM(p.head_dim, D, KVQ_DISPATCH_GROUP(p.group, H, KVQ_CUDA_TRY((launch_fp16<D, H>(p.keys, p.values, p.regions, p.tokens, p.splits,
                                                                                                   p.queries, p.scale, parts, 0, used, stream)));))
  return merge(parts, used, p.outputs, stream);
}

cudaError_t softmax_rows(const float* scores, int rows, int tokens, float scale, float* probs, __half* probs_fp16, cudaStream_t stream) {
  if (rows < 0 || tokens < 1) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return launch_kernel(softmax_kernel, dim3(static_cast<unsigned>(rows)), dim3(256), 0, stream, scores, tokens, scale, probs, probs_fp16);
}

}  // namespace kvq::gpu
