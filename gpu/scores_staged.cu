// q . K^T over channel-axis keys on the tensor cores, staged: each block streams its share of a
// region's tokens through a 4-buffer cp.async pipeline (gpu/inner_stage.cuh), so two stages of 128
// tokens are always in flight while one is multiplied; q's B fragments are built once per block, and
// a GQA group of up to 4 heads shares each mma (hi and lo parts in B's columns). scores_inner takes it
// for the GQA shapes gpu/scores_heads.cu does not take (channel groups of 16, codes off 16 bytes).
#include <algorithm>

#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/inner_stage.cuh"
#include "gpu/launch.h"
#include "gpu/scores_staged.h"

namespace kvq::gpu {
namespace {

template <int Bits, int D, int Group>
struct ScoresSmem {
  float q[Group][D];
  float qscale[Group];
  stage::QuerySmem<Bits, D, Group> query;
  stage::KeyMetaSmem<D> meta[2];
};

// Stages [first, last) of region blockIdx.y.
template <int Bits, int D, int Group>
__global__ void __launch_bounds__(stage::kThreads) scores_staged_kernel(ScoresParams p, stage::Layout layout, int stages_per_block) {
  wait_for_prior_kernels();
  extern __shared__ __align__(16) char smem[];
  auto& sh = *reinterpret_cast<ScoresSmem<Bits, D, Group>*>(smem);
  char* buffers = stage::buffers<ScoresSmem<Bits, D, Group>>(smem);
  const RegionShape s = p.keys.shape;
  const int r = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int total = (s.tokens + stage::kTokens - 1) / stage::kTokens;
  const int first = blockIdx.x * stages_per_block, last = min(total, first + stages_per_block);
  if (first >= last) return;
  auto buffer = [&](int st) { return buffers + (st % stage::kBuffers) * layout.bytes; };
  // Prologue: three stages in flight, then q's side while they land.
  for (int i = 0; i < stage::kBuffers - 1; ++i) {
    if (first + i < last) stage::key_issue(buffer(i), layout, p.keys, p.token_scale, r, (first + i) * stage::kTokens);
    copy_commit();
  }
  stage::query_prepare<Bits, D, Group>(p.queries + static_cast<long long>(r) * Group * D, s.group_size, sh.query, sh.q, sh.qscale);
  copy_wait<stage::kBuffers - 2>();
  __syncthreads();
  stage::Meta m;
  stage::key_meta_load<D>(buffer(0), layout, p.keys, r, first * stage::kTokens, m);
  stage::key_meta_store<D>(m, sh.meta[0]);
  for (int st = first; st < last; ++st) {
    const int i = st - first, t0 = st * stage::kTokens;
    copy_wait<stage::kBuffers - 3>();  // stages st and st + 1 have landed
    __syncthreads();
    if (st + stage::kBuffers - 1 < last) stage::key_issue(buffer(i + stage::kBuffers - 1), layout, p.keys, p.token_scale, r, t0 + (stage::kBuffers - 1) * stage::kTokens);
    copy_commit();
    if (st + 1 < last) stage::key_meta_load<D>(buffer(i + 1), layout, p.keys, r, t0 + stage::kTokens, m);
    const stage::KeySources src = stage::key_sources(p.keys, p.token_scale, r, t0);
    float score[2][2][stage::kLaneHeads<Group>];
    stage::key_compute<Bits, D, Group>(stage::landed<std::uint32_t>(buffer(i), layout.codes, src.codes), sh.meta[i % 2], sh.query,
                                       s.group_size, score);
    const float* sigma = src.token_scale ? stage::landed<float>(buffer(i), layout.token_scale, src.token_scale) : nullptr;
#pragma unroll
    for (int tile = 0; tile < 2; ++tile)
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int row = 32 * warp + 16 * tile + g + 8 * k;
        if (row >= src.n) continue;
#pragma unroll
        for (int e = 0; e < stage::kLaneHeads<Group>; ++e) {
          const int h = stage::lane_head<Group>(t, e);
          if (h < Group) p.scores[(static_cast<long long>(r) * Group + h) * s.tokens + t0 + row] = sigma ? score[tile][k][e] * sigma[row] : score[tile][k][e];
        }
      }
    if (st + 1 < last) stage::key_meta_store<D>(m, sh.meta[(i + 1) % 2]);
  }
}

template <int Bits, int D, int Group>
cudaError_t launch(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  const stage::Layout layout = stage::layout(s, p.token_scale != nullptr, 0);
  const std::size_t smem = stage::smem_bytes<ScoresSmem<Bits, D, Group>>(layout.bytes);
  auto kernel = scores_staged_kernel<Bits, D, Group>;
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), stage::kThreads, smem, info));
  // One wave of resident blocks, each streaming a contiguous run of stages.
  const int total = (s.tokens + stage::kTokens - 1) / stage::kTokens;
  const int blocks = std::min(total, info.wave_per_region(p.keys.regions));
  const int per_block = (total + blocks - 1) / blocks;
  const dim3 grid(static_cast<unsigned>((total + per_block - 1) / per_block), static_cast<unsigned>(p.keys.regions));
  return launch_kernel(kernel, grid, dim3(stage::kThreads), smem, stream, p, layout, per_block);
}

}  // namespace

bool scores_staged_supported(const RegionShape& s, int group) { return s.channel_axis && stage::supported(s, group); }

cudaError_t scores_staged(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  if (!scores_staged_supported(s, p.group)) return cudaErrorInvalidValue;
  if (s.tokens == 0) return cudaSuccess;
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, KVQ_DISPATCH_GROUP(p.group, H, return launch<B, D, H>(p, stream);)))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
