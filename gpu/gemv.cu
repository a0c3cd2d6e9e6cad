#include "core/packed.h"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/gemv.h"
#include "gpu/meta.cuh"
#include "gpu/outputs_mma.h"
#include "gpu/reduce.cuh"
#include "gpu/scores_heads.h"
#include "gpu/scores_mma.h"
#include "gpu/scores_staged.h"

namespace kvq::gpu {
namespace {

constexpr int kMaxGroup = 8;

// Scores over channel-axis keys: one thread per token, reading its row of codes once for the whole
// GQA group; blockDim 128, so a warp holds 32 consecutive tokens = one hybrid zero-block.
template <int Bits, int D, int Group>
__global__ void __launch_bounds__(128) scores_channel(ScoresParams p) {
  wait_for_prior_kernels();
  const RegionShape s = p.keys.shape;
  const int r = blockIdx.y, G = s.group_size, groups_per_row = D / G;
  __shared__ float q_s[Group][D];
  __shared__ float qsum_s[Group][D / 16];
  for (int i = threadIdx.x; i < Group * D; i += blockDim.x) q_s[i / D][i % D] = p.queries[(static_cast<long long>(r) * Group) * D + i];
  __syncthreads();
  for (int i = threadIdx.x; i < Group * groups_per_row; i += blockDim.x) {
    float sum = 0.0f;
    for (int c = 0; c < G; ++c) sum += q_s[i / groups_per_row][(i % groups_per_row) * G + c];
    qsum_s[i / groups_per_row][i % groups_per_row] = sum;
  }
  __syncthreads();
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const bool live = t < s.tokens;
  const long long group0 = static_cast<long long>(r) * s.group_stride() + static_cast<long long>(t) * groups_per_row;
  const int offset = packed::sym_offset(Bits, s.twos);
  // Hybrid: this token's first compact zero = zero_base of its 32-token block + asym groups before it.
  std::uint32_t zero_index = 0;
  if (s.mode == GroupMode::hybrid) {
    int mine = 0;
    bool sign;
    if (live)
      for (int g = 0; g < groups_per_row; ++g) meta_value(p.keys.scales, group0 + g, s.meta_fp16, sign), mine += sign;
    const int before = warp_exclusive_sum(mine);
    if (live) zero_index = p.keys.zero_offset[r] + p.keys.zero_base[static_cast<long long>(r) * s.zero_block_stride() + t / 32] + before;
  }
  if (!live) return;
  const std::uint32_t* row = p.keys.codes + static_cast<long long>(r) * s.code_stride() + static_cast<long long>(t) * (D / 32) * Bits;
  float score[Group] = {};
  float dot[Group] = {};
#pragma unroll
  for (int ch = 0; ch < D / 32; ++ch) {
    std::uint32_t w[Bits];
#pragma unroll
    for (int k = 0; k < Bits; ++k) w[k] = __ldg(row + ch * Bits + k);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const float f = static_cast<float>(packed::get_code(w, Bits, half * 16 + i));
#pragma unroll
        for (int h = 0; h < Group; ++h) dot[h] += f * q_s[h][ch * 32 + half * 16 + i];
      }
      const int end = ch * 32 + half * 16 + 16;  // channels consumed so far
      if (end % G == 0) {
        const int g = end / G - 1;
        bool sign;
        const float scale = meta_value(p.keys.scales, group0 + g, s.meta_fp16, sign);
        const bool asym = s.mode == GroupMode::asym || (s.mode == GroupMode::hybrid && sign);
        float zero_eff = -static_cast<float>(offset) * scale;
        if (asym) zero_eff = zero_value(p.keys.zeros, s.mode == GroupMode::asym ? group0 + g : zero_index++, s.meta_fp16);
#pragma unroll
        for (int h = 0; h < Group; ++h) {
          score[h] += scale * dot[h] + zero_eff * qsum_s[h][g];
          dot[h] = 0.0f;
        }
      }
    }
  }
  // Token scales (rotation family) multiply the whole score back: s_t = sigma_t * (q' . x'_t).
  const float sigma = p.token_scale ? p.token_scale[static_cast<long long>(r) * s.tokens + t] : 1.0f;
#pragma unroll
  for (int h = 0; h < Group; ++h) {
    if (p.token_scale) score[h] *= sigma;
    p.scores[(static_cast<long long>(r) * Group + h) * s.tokens + t] = score[h];
  }
}

// Outputs over token-axis values: one thread per channel; block (split, region) covers a contiguous
// run of G-token blocks; partial sums are added in split order by sum_splits.
template <int Bits, int D, int Group>
__global__ void __launch_bounds__(D) outputs_token(OutputsParams p) {
  wait_for_prior_kernels();
  const RegionShape s = p.values.shape;
  const int split = blockIdx.x, r = blockIdx.y, c = threadIdx.x, G = s.group_size;
  const int blocks = s.tokens / G;
  const int per_split = (blocks + p.splits - 1) / p.splits;
  const int b0 = split * per_split, b1 = min(blocks, b0 + per_split);
  __shared__ float p_s[Group][128];
  __shared__ float psum_s[Group];
  __shared__ int warp_asym[D / 32];
  const int offset = packed::sym_offset(Bits, s.twos);
  float acc[Group] = {};
  const long long region_groups = static_cast<long long>(r) * s.group_stride();
  const std::uint32_t* codes = p.values.codes + static_cast<long long>(r) * s.code_stride();
  for (int blk = b0; blk < b1; ++blk) {
    __syncthreads();
    for (int i = c; i < Group * G; i += D) {
      const long long t = static_cast<long long>(blk) * G + i % G;
      float pt = p.probs[(static_cast<long long>(r) * Group + i / G) * s.tokens + t];
      // Token scales (rotation family) fold into the weights: sum_t p_t sigma_t x'_t.
      if (p.token_scale) pt *= p.token_scale[static_cast<long long>(r) * s.tokens + t];
      p_s[i / G][i % G] = pt;
    }
    __syncthreads();
    if (c < Group) {
      float sum = 0.0f;
      for (int i = 0; i < G; ++i) sum += p_s[c][i];
      psum_s[c] = sum;
    }
    const long long group = region_groups + static_cast<long long>(blk) * D + c;
    bool sign;
    const float scale = meta_value(p.values.scales, group, s.meta_fp16, sign);
    const bool asym = s.mode == GroupMode::asym || (s.mode == GroupMode::hybrid && sign);
    float zero_eff = -static_cast<float>(offset) * scale;
    if (s.mode == GroupMode::asym) zero_eff = zero_value(p.values.zeros, group, s.meta_fp16);
    if (s.mode == GroupMode::hybrid) {
      // Compact zero index: the block's base + asymmetric channels before c (ballot within the warp,
      // warp totals across the block).
      const unsigned ballot = __ballot_sync(0xffffffffu, asym);
      if ((c & 31) == 0) warp_asym[c / 32] = __popc(ballot);
      __syncthreads();
      int before = __popc(ballot & ((1u << (c & 31)) - 1u));
      // Fixed trip count: a run-time bound let the compiler emit a vector load past the array.
#pragma unroll
      for (int w = 0; w < D / 32; ++w)
        if (w < c / 32) before += warp_asym[w];
      if (asym) {
        const long long z = p.values.zero_offset[r] + p.values.zero_base[static_cast<long long>(r) * s.zero_block_stride() + blk] + before;
        zero_eff = zero_value(p.values.zeros, z, s.meta_fp16);
      }
    }
    __syncthreads();
    float dot[Group] = {};
    for (int t0 = 0; t0 < G; t0 += 32) {
      const long long t = static_cast<long long>(blk) * G + t0;
      std::uint32_t w[Bits];
      const std::uint32_t* chunk = codes + ((t / 32) * D + c) * Bits;
#pragma unroll
      for (int k = 0; k < Bits; ++k) w[k] = __ldg(chunk + k);
      const int first = static_cast<int>(t % 32), count = min(32, G);
#pragma unroll 16
      for (int i = 0; i < count; ++i) {
        const float f = static_cast<float>(packed::get_code(w, Bits, first + i));
#pragma unroll
        for (int h = 0; h < Group; ++h) dot[h] += f * p_s[h][t0 + i];
      }
    }
#pragma unroll
    for (int h = 0; h < Group; ++h) acc[h] += scale * dot[h] + zero_eff * psum_s[h];
  }
#pragma unroll
  for (int h = 0; h < Group; ++h)
    p.partial[((static_cast<long long>(split) * gridDim.y + r) * Group + h) * D + c] = acc[h];
}


// fp16 baselines, in the style of the fp16 fused attention (93% of the copy bandwidth): a warp takes
// 8 tokens at a time, each lane loading its D/32 channels of every row (one 8- or 4-byte load per row,
// coalesced across the warp), so 8 rows are in flight per warp.
constexpr int kHalfChunk = 8;

template <int D>
__device__ __forceinline__ void load_half_row(const __half* row, int lane, float (&x)[D / 32]) {
  if constexpr (D == 128) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(row + lane * 4));
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x)), b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
    x[0] = a.x, x[1] = a.y, x[2] = b.x, x[3] = b.y;
  } else {
    const unsigned raw = __ldg(reinterpret_cast<const unsigned*>(row + lane * 2));
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw));
    x[0] = a.x, x[1] = a.y;
  }
}

// Rows base .. base + 7 (rows past `end` repeat the last live one; callers mask them).
template <int D>
__device__ __forceinline__ void load_half_chunk(const __half* cache, int base, int end, int lane, float (&x)[kHalfChunk][D / 32]) {
#pragma unroll
  for (int j = 0; j < kHalfChunk; ++j) load_half_row<D>(cache + static_cast<long long>(min(base + j, end - 1)) * D, lane, x[j]);
}

// Scores: block (x, r) takes tokens [x * per_block, ...) of region r, warps interleaved by 8 tokens.
template <int D, int Group>
__global__ void __launch_bounds__(128) scores_half(Fp16Params p, int per_block) {
  wait_for_prior_kernels();
  constexpr int kPer = D / 32;
  const int r = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int a = blockIdx.x * per_block, b = min(p.tokens, a + per_block);
  float q[Group][kPer];
#pragma unroll
  for (int h = 0; h < Group; ++h)
#pragma unroll
    for (int e = 0; e < kPer; ++e) q[h][e] = p.vectors[(static_cast<long long>(r) * Group + h) * D + lane * kPer + e];
  const __half* cache = p.cache + static_cast<long long>(r) * p.tokens * D;
  for (int base = a + warp * kHalfChunk; base < b; base += 4 * kHalfChunk) {
    float x[kHalfChunk][kPer];
    load_half_chunk<D>(cache, base, b, lane, x);
#pragma unroll
    for (int h = 0; h < Group; ++h) {
      float s[kHalfChunk];
#pragma unroll
      for (int j = 0; j < kHalfChunk; ++j) {
        s[j] = 0.0f;
#pragma unroll
        for (int e = 0; e < kPer; ++e) s[j] += q[h][e] * x[j][e];
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
#pragma unroll
        for (int j = 0; j < kHalfChunk; ++j) s[j] += __shfl_xor_sync(0xffffffffu, s[j], off);
#pragma unroll
      for (int j = 0; j < kHalfChunk; ++j)
        if (lane == j && base + j < b) p.out[(static_cast<long long>(r) * Group + h) * p.tokens + base + j] = s[j];
    }
  }
}

// Outputs: block (split, r) sums its token run into partial[split]; warps interleaved by 8 tokens,
// then added in warp order through shared memory.
template <int D, int Group>
__global__ void __launch_bounds__(128) outputs_half(Fp16Params p) {
  wait_for_prior_kernels();
  constexpr int kPer = D / 32;
  __shared__ float red[4][Group][D];
  const int split = blockIdx.x, r = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int per_split = (p.tokens + p.splits - 1) / p.splits;
  const int a = split * per_split, b = min(p.tokens, a + per_split);
  const __half* cache = p.cache + static_cast<long long>(r) * p.tokens * D;
  float acc[Group][kPer] = {};
  for (int base = a + warp * kHalfChunk; base < b; base += 4 * kHalfChunk) {
    float x[kHalfChunk][kPer];
    load_half_chunk<D>(cache, base, b, lane, x);
#pragma unroll
    for (int h = 0; h < Group; ++h) {
      const float* pr = p.vectors + (static_cast<long long>(r) * Group + h) * p.tokens;
#pragma unroll
      for (int j = 0; j < kHalfChunk; ++j) {
        const float w = base + j < b ? __ldg(pr + base + j) : 0.0f;
#pragma unroll
        for (int e = 0; e < kPer; ++e) acc[h][e] += w * x[j][e];
      }
    }
  }
#pragma unroll
  for (int h = 0; h < Group; ++h)
#pragma unroll
    for (int e = 0; e < kPer; ++e) red[warp][h][lane * kPer + e] = acc[h][e];
  __syncthreads();
  for (int i = threadIdx.x; i < Group * D; i += blockDim.x) {
    const float sum = red[0][i / D][i % D] + red[1][i / D][i % D] + red[2][i / D][i % D] + red[3][i / D][i % D];
    p.partial[((static_cast<long long>(split) * gridDim.y + r) * Group) * D + i] = sum;
  }
}

bool supported(const RegionShape& s, int group) {
  return bits_built(s.bits) && head_dim_built(s.head_dim) && group_size_built(s.group_size) && heads_built(group) && s.tokens >= 0;
}

}  // namespace

int output_splits(int regions, int tokens, int multiprocessors) {
  // About 8 blocks per multiprocessor (enough loads in flight to cover HBM latency), never more splits
  // than 128-token pieces.
  const int want = (8 * multiprocessors + regions - 1) / regions;
  return std::max(1, std::min(want, std::max(1, tokens / 128)));
}

cudaError_t scores_inner(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  if (!supported(s, p.group) || !s.channel_axis || s.head_dim % s.group_size != 0) return cudaErrorInvalidValue;
  if (s.tokens == 0) return cudaSuccess;
  if (p.kernel != GemvKernel::cuda_cores) {
    // Measured on the H100 (docs/PERF.md): lane-owned chunks for one head per kv head, heads sharing
    // an int8 mma for GQA groups, the staged kernel for GQA shapes that one does not take (channel
    // groups of 16); CUDA cores where none supports the shape.
    if (scores_mma_supported(s, p.group)) return scores_mma(p, stream);
    if (scores_heads_supported(p.keys, p.group)) return scores_heads(p, stream);
    if (scores_staged_supported(s, p.group)) return scores_staged(p, stream);
  }
  const dim3 grid(static_cast<unsigned>((s.tokens + 127) / 128), static_cast<unsigned>(p.keys.regions));
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, KVQ_DISPATCH_GROUP(p.group, H,
      return launch_kernel(scores_channel<B, D, H>, grid, dim3(128), 0, stream, p);)))
  return cudaErrorInvalidValue;
}

cudaError_t outputs_inner(const OutputsParams& p, cudaStream_t stream) {
  const RegionShape& s = p.values.shape;
  if (!supported(s, p.group) || s.channel_axis || s.tokens % s.group_size != 0 || p.splits < 1) return cudaErrorInvalidValue;
  if (p.kernel != GemvKernel::cuda_cores && outputs_mma_supported(p.values, p.group)) return outputs_mma(p, stream);  // else CUDA cores
  const dim3 grid(static_cast<unsigned>(p.splits), static_cast<unsigned>(p.values.regions));
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, KVQ_DISPATCH_GROUP(p.group, H,
      KVQ_CUDA_TRY(launch_kernel(outputs_token<B, D, H>, grid, dim3(D), 0, stream, p));)))
  const long long n = static_cast<long long>(p.values.regions) * p.group * s.head_dim;
  return add_splits(p.partial, p.splits, n, p.outputs, stream);
}

cudaError_t scores_fp16(const Fp16Params& p, cudaStream_t stream) {
  if (p.group < 1 || p.group > kMaxGroup || (p.head_dim != 64 && p.head_dim != 128) || p.tokens < 0) return cudaErrorInvalidValue;
  if (p.tokens == 0) return cudaSuccess;
  // About 8 blocks per multiprocessor in all, each a whole number of 32-token warp rounds.
  int device = 0, sms = 0;
  KVQ_CUDA_TRY(cudaGetDevice(&device));
  KVQ_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int want = std::max(1, 8 * sms / p.regions);
  const int per_block = std::max(32, (p.tokens + want * 32 - 1) / (want * 32) * 32);
  const dim3 grid(static_cast<unsigned>((p.tokens + per_block - 1) / per_block), static_cast<unsigned>(p.regions));
  KVQ_DISPATCH_HEAD_DIM(p.head_dim, D, KVQ_DISPATCH_GROUP(p.group, H, return launch_kernel(scores_half<D, H>, grid, dim3(128), 0, stream, p, per_block);))
  return cudaErrorInvalidValue;
}

cudaError_t outputs_fp16(const Fp16Params& p, cudaStream_t stream) {
  if (p.group < 1 || p.group > kMaxGroup || p.splits < 1 || (p.head_dim != 64 && p.head_dim != 128)) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(p.splits), static_cast<unsigned>(p.regions));
  KVQ_DISPATCH_HEAD_DIM(p.head_dim, D, KVQ_DISPATCH_GROUP(p.group, H, KVQ_CUDA_TRY(launch_kernel(outputs_half<D, H>, grid, dim3(128), 0, stream, p));))
  const long long n = static_cast<long long>(p.regions) * p.group * p.head_dim;
  return add_splits(p.partial, p.splits, n, p.out, stream);
}

}  // namespace kvq::gpu
