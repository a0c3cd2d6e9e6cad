// Fused decode attention (gpu/attention.h). Each part writes its unnormalized output o, its running
// max m and its sum l per head; merge_parts combines them: M = max m_s, out = sum o_s e^(m_s - M) /
// sum l_s e^(m_s - M). Scratch layout: o [parts][regions][group][head_dim], then ml [parts][regions][group][2].
#include <algorithm>
#include <cmath>

#include "gpu/attention.h"
#include "gpu/cuda_check.h"
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

// A thread's loads go out kBatch parts at a time (one part's loads in turn waited ~0.5 us each, ~11 us
// over a fused attention's parts); the arithmetic runs in part order as the loads land.
__global__ void merge_parts(Parts p, int parts, float* out) {
  constexpr int kBatch = 8;
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const long long n = static_cast<long long>(p.regions) * p.group * p.head_dim;
  if (i >= n) return;
  const int c = static_cast<int>(i % p.head_dim), rh = static_cast<int>(i / p.head_dim), r = rh / p.group, h = rh % p.group;
  float m = -INFINITY;
  for (int s0 = 0; s0 < parts; s0 += kBatch) {
    float ms[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) ms[k] = s0 + k < parts ? p.ml[2 * p.row(s0 + k, r, h)] : -INFINITY;
#pragma unroll
    for (int k = 0; k < kBatch; ++k) m = fmaxf(m, ms[k]);
  }
  float o = 0.0f, l = 0.0f;
  if (m != -INFINITY)
    for (int s0 = 0; s0 < parts; s0 += kBatch) {
      float ms[kBatch], os[kBatch], ls[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const bool live = s0 + k < parts;
        const long long row = p.row(live ? s0 + k : 0, r, h);
        ms[k] = live ? p.ml[2 * row] : -INFINITY;
        os[k] = live ? p.o[row * p.head_dim + c] : 0.0f;
        ls[k] = live ? p.ml[2 * row + 1] : 0.0f;
      }
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        if (ms[k] == -INFINITY) continue;
        const float w = __expf(ms[k] - m);
        o += w * os[k];
        l += w * ls[k];
      }
    }
  out[i] = l > 0.0f ? o / l : 0.0f;
}

// Part `part0 + blockIdx.x` of region blockIdx.y covers tokens [blockIdx.x * per_part, +per_part).
template <int D, int Group>
__global__ void __launch_bounds__(128) fp16_attention_kernel(const __half* keys, const __half* values, int tokens, int per_part, const float* q,
                                                             float scale, Parts parts, int part0) {
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
  fp16_attention_kernel<D, Group><<<dim3(static_cast<unsigned>(used), static_cast<unsigned>(regions)), 128, 0, stream>>>(keys, values, tokens, per_part, q,
                                                                                                                        scale, parts, part0);
  return cudaGetLastError();
}

cudaError_t merge(Parts parts, int count, float* outputs, cudaStream_t stream) {
  const long long n = static_cast<long long>(parts.regions) * parts.group * parts.head_dim;
  merge_parts<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(parts, count, outputs);
  return cudaGetLastError();
}

// GQA groups, unfused: the scores into p.scores_scratch, then the values' kernel running the softmax
// over them and writing parts [0, used). The windows then take part `used`.
cudaError_t unfused_inner(const AttentionParams& p, const Parts& parts, int& used, cudaStream_t stream) {
  KVQ_CUDA_TRY(scores_inner({p.keys, p.queries, p.group, p.scores_scratch, p.key_token_scale, GemvKernel::automatic}, stream));
  OutputsParams o;
  o.values = p.values, o.probs = p.scores_scratch, o.group = p.group, o.splits = p.splits, o.token_scale = p.value_token_scale;
  return outputs_softmax_mma(o, p.scale, parts, used, stream);
}

__global__ void softmax_kernel(const float* scores, int tokens, float scale, float* probs, __half* probs_fp16) {
  __shared__ float red[32];
  const long long row = blockIdx.x;
  const float* s = scores + row * tokens;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < tokens; i += blockDim.x) m = fmaxf(m, s[i] * scale);
  m = block_reduce(m, red, MaxOp{});
  float sum = 0.0f;
  for (int i = threadIdx.x; i < tokens; i += blockDim.x) sum += __expf(s[i] * scale - m);
  sum = block_reduce(sum, red, SumOp{});
  const float inv = 1.0f / sum;
  for (int i = threadIdx.x; i < tokens; i += blockDim.x) {
    const float pr = __expf(s[i] * scale - m) * inv;
    if (probs) probs[row * tokens + i] = pr;
    if (probs_fp16) probs_fp16[row * tokens + i] = __float2half_rn(pr);
  }
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

cudaError_t attention_inner(const AttentionParams& p, cudaStream_t stream) {
  const RegionShape &ks = p.keys.shape, &vs = p.values.shape;
  const bool shapes = ks.channel_axis && !vs.channel_axis && stage::supported(ks, p.group) && stage::supported(vs, p.group) && ks.tokens == vs.tokens &&
                      ks.head_dim == vs.head_dim && p.keys.regions == p.values.regions && p.splits >= 1 && p.window >= 0 &&
                      (p.window == 0 || (p.window_keys && p.window_values));
  if (!shapes || !attention_inner_bits(ks.bits, vs.bits)) return cudaErrorInvalidValue;
  const Parts parts = parts_of(p.scratch, p.keys.regions, p.group, ks.head_dim, p.splits);
  int used = 0, window_parts = 0;
  bool windows_taken = false;  // by the quantized kernel (the lane-owned one takes them into its last part)
  if (ks.tokens > 0 && p.group > 1 && p.scores_scratch && outputs_mma_supported(p.values, p.group)) {
    KVQ_CUDA_TRY(unfused_inner(p, parts, used, stream));
  } else if (ks.tokens > 0) {
    switch (ks.bits * 10 + vs.bits) {
      case 32: KVQ_CUDA_TRY(inner_k3v2(p, parts, used, windows_taken, stream)); break;
      case 33: KVQ_CUDA_TRY(inner_k3v3(p, parts, used, windows_taken, stream)); break;
      case 22: KVQ_CUDA_TRY(inner_k2v2(p, parts, used, windows_taken, stream)); break;
      case 44: KVQ_CUDA_TRY(inner_k4v4(p, parts, used, windows_taken, stream)); break;
      default: return cudaErrorInvalidValue;
    }
  }
  if (p.window > 0 && !windows_taken) {
    KVQ_DISPATCH_HEAD_DIM(ks.head_dim, D, KVQ_DISPATCH_GROUP(p.group, H, KVQ_CUDA_TRY((launch_fp16<D, H>(p.window_keys, p.window_values, p.keys.regions, p.window, 1,
                                                                                                     p.queries, p.scale, parts, used, window_parts, stream)));))
  }
  if (used + window_parts == 0) return cudaMemsetAsync(p.outputs, 0, sizeof(float) * parts.regions * parts.group * parts.head_dim, stream);
  return merge(parts, used + window_parts, p.outputs, stream);
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
  softmax_kernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(scores, tokens, scale, probs, probs_fp16);
  return cudaGetLastError();
}

}  // namespace kvq::gpu
