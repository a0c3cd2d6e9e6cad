#pragma once
// The fused attention kernel over an InnerQ cache (gpu/attention.h): stages of 128 tokens with keys
// and values in flight together; per stage the scores (tensor cores), an online softmax per head, p's
// B fragments and the values' product, accumulated in registers and rescaled by each new maximum.
#include <algorithm>
#include <cmath>

#include "gpu/attention_parts.h"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/inner_stage.cuh"
#include "gpu/launch.h"

namespace kvq::gpu::attention_detail {

template <int KBits, int VBits, int D, int Group>
struct InnerSmem {
  float q[Group][D];
  float qscale[Group];
  stage::QuerySmem<KBits, D, Group> query;
  stage::KeyMetaSmem<D> key_meta[2];
  stage::ValueMetaSmem<D> value_meta[2];
  float p[Group][stage::kTokens];
  float pscale[Group];
  float m[Group], l[Group], corr[Group];
  int warp_count[8][stage::kThreads / 32];
  stage::ProbSmem<VBits, Group> probs;
};

struct InnerLayouts {
  stage::Layout k, v;
  int bytes;  // one stage: keys then values
};

template <int KBits, int VBits, int D, int Group>
__global__ void __launch_bounds__(stage::kThreads) inner_attention_kernel(AttentionParams p, InnerLayouts layout, int stages_per_part, Parts parts) {
  wait_for_prior_kernels();
  extern __shared__ __align__(16) char smem[];
  auto& sh = *reinterpret_cast<InnerSmem<KBits, VBits, D, Group>*>(smem);
  char* buffers = stage::buffers<InnerSmem<KBits, VBits, D, Group>>(smem);
  const RegionShape ks = p.keys.shape;
  const int r = blockIdx.y, part = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  constexpr int kTiles = D / 64;
  const int total = (ks.tokens + stage::kTokens - 1) / stage::kTokens;
  const int first = part * stages_per_part, last = min(total, first + stages_per_part);
  auto kbuf = [&](int i) { return buffers + (i % stage::kBuffers) * layout.bytes; };
  auto vbuf = [&](int i) { return kbuf(i) + layout.k.bytes; };
  auto issue = [&](int i) {
    const int t0 = (first + i) * stage::kTokens;
    if (first + i < last) {
      stage::key_issue(kbuf(i), layout.k, p.keys, p.key_token_scale, r, t0);
      stage::value_issue<Group>(vbuf(i), layout.v, p.values, p.value_token_scale, nullptr, r, t0);
    }
    copy_commit();
  };
  for (int i = 0; i < stage::kBuffers - 1; ++i) issue(i);
  stage::query_prepare<KBits, D, Group>(p.queries + static_cast<long long>(r) * Group * D, ks.group_size, sh.query, sh.q, sh.qscale);
  if (threadIdx.x < Group) sh.m[threadIdx.x] = -INFINITY, sh.l[threadIdx.x] = 0.0f;
  copy_wait<stage::kBuffers - 2>();
  __syncthreads();
  stage::Meta km, vm;
  if (first < last) {
    stage::key_meta_load<D>(kbuf(0), layout.k, p.keys, r, first * stage::kTokens, km);
    stage::key_meta_store<D>(km, sh.key_meta[0]);
    stage::value_meta_load<D>(vbuf(0), layout.v, p.values, r, first * stage::kTokens, vm, sh.warp_count);
    stage::value_meta_store<D>(vm, sh.value_meta[0]);
  }
  float acc[kTiles][2][stage::kLaneHeads<Group>] = {};
  for (int st = first; st < last; ++st) {
    const int i = st - first, t0 = st * stage::kTokens;
    copy_wait<stage::kBuffers - 3>();
    __syncthreads();
    issue(i + stage::kBuffers - 1);
    if (st + 1 < last) {
      stage::key_meta_load<D>(kbuf(i + 1), layout.k, p.keys, r, t0 + stage::kTokens, km);
      stage::value_meta_load<D>(vbuf(i + 1), layout.v, p.values, r, t0 + stage::kTokens, vm, sh.warp_count);
    }
    // Scores of the stage into p (scaled, token-scaled, -inf past the end).
    const stage::KeySources ksrc = stage::key_sources(p.keys, p.key_token_scale, r, t0);
    float score[2][2][stage::kLaneHeads<Group>];
    stage::key_compute<KBits, D, Group>(stage::landed<std::uint32_t>(kbuf(i), layout.k.codes, ksrc.codes), sh.key_meta[i % 2], sh.query,
                                        ks.group_size, score);
    const float* sigma = ksrc.token_scale ? stage::landed<float>(kbuf(i), layout.k.token_scale, ksrc.token_scale) : nullptr;
#pragma unroll
    for (int tile = 0; tile < 2; ++tile)
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int row = 32 * warp + 16 * tile + g + 8 * k;
#pragma unroll
        for (int e = 0; e < stage::kLaneHeads<Group>; ++e) {
          const int h = stage::lane_head<Group>(t, e);
          if (h < Group) sh.p[h][row] = row < ksrc.n ? score[tile][k][e] * (sigma ? sigma[row] : 1.0f) * p.scale : -INFINITY;
        }
      }
    __syncthreads();
    // Online softmax, warp h for head h (the same warps then prepare p's side for those heads).
    for (int h = warp; h < Group; h += stage::kThreads / 32) {
      float s[4], mx = sh.m[h];
#pragma unroll
      for (int j = 0; j < 4; ++j) s[j] = sh.p[h][lane + 32 * j], mx = fmaxf(mx, s[j]);
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float e = __expf(s[j] - mx);
        sh.p[h][lane + 32 * j] = e;
        sum += e;
      }
      for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      if (lane == 0) {
        const float corr = __expf(sh.m[h] - mx);
        sh.corr[h] = corr;
        sh.l[h] = sh.l[h] * corr + sum;
        sh.m[h] = mx;
      }
      __syncwarp();
    }
    const stage::ValueSources vsrc = stage::value_sources(p.values, p.value_token_scale, r, t0);
    stage::probs_prepare<VBits, Group>(sh.p, vsrc.token_scale ? stage::landed<float>(vbuf(i), layout.v.token_scale, vsrc.token_scale) : nullptr,
                                       vsrc.n, p.values.shape.group_size, sh.probs, sh.pscale);
    stage::for_lane_outputs<D, Group>(acc, [&](float& x, int h, int) { x *= sh.corr[h]; });
    stage::value_compute<VBits, D, Group>(stage::landed<std::uint32_t>(vbuf(i), layout.v.codes, vsrc.codes), sh.value_meta[i % 2], sh.probs,
                                          p.values.shape.group_size, vsrc.n, acc);
    if (st + 1 < last) {
      stage::key_meta_store<D>(km, sh.key_meta[(i + 1) % 2]);
      stage::value_meta_store<D>(vm, sh.value_meta[(i + 1) % 2]);
    }
  }
  __syncthreads();
  stage::for_lane_outputs<D, Group>(acc, [&](float x, int h, int c) { parts.o[parts.row(part, r, h) * D + c] = x; });
  if (threadIdx.x < Group) {
    const long long row = parts.row(part, r, threadIdx.x);
    parts.ml[2 * row] = first < last ? sh.m[threadIdx.x] : -INFINITY;
    parts.ml[2 * row + 1] = first < last ? sh.l[threadIdx.x] : 0.0f;
  }
}

template <int KBits, int VBits, int D, int Group>
cudaError_t launch_inner(const AttentionParams& p, const Parts& parts, int& used, cudaStream_t stream) {
  InnerLayouts layout;
  layout.k = stage::layout(p.keys.shape, p.key_token_scale != nullptr, 0);
  layout.v = stage::layout(p.values.shape, p.value_token_scale != nullptr, 0);
  layout.bytes = layout.k.bytes + layout.v.bytes;
  const std::size_t smem = stage::smem_bytes<InnerSmem<KBits, VBits, D, Group>>(layout.bytes);
  auto kernel = inner_attention_kernel<KBits, VBits, D, Group>;
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), stage::kThreads, smem, info));
  // At most one wave of resident blocks: the stages of a part run in turn, so a partial second wave
  // would add a whole part's time.
  const int total = (p.keys.shape.tokens + stage::kTokens - 1) / stage::kTokens;
  const SplitRuns runs = split_runs(total, p.splits, info, p.keys.regions);
  used = runs.splits;
  return launch_kernel(kernel, dim3(static_cast<unsigned>(used), static_cast<unsigned>(p.keys.regions)), dim3(stage::kThreads), smem, stream, p, layout,
                       runs.per_split, parts);
}

}  // namespace kvq::gpu::attention_detail
