// p . V^ over token-axis values on the tensor cores: each block streams one run of 128-token stages
// of a region (codes, scales, zero bases, p and token scales) through the cp.async pipeline of
// gpu/inner_stage.cuh, builds p's B fragments per stage, and keeps the outputs in registers; the
// runs' partial sums are added in order by a second pass.
#include <algorithm>

#include "gpu/cuda_check.h"
#include "gpu/dispatch.cuh"
#include "gpu/inner_stage.cuh"
#include "gpu/launch.h"
#include "gpu/outputs_mma.h"
#include "gpu/reduce.cuh"

namespace kvq::gpu {

namespace {

template <int Bits, int D, int Group>
struct OutputsSmem {
  float p[Group][stage::kTokens];
  float pscale[Group];
  int warp_count[8][stage::kThreads / 32];
  stage::ProbSmem<Bits, Group> probs;
  stage::ValueMetaSmem<D> meta[2];
};

template <int Bits, int D, int Group>
__global__ void __launch_bounds__(stage::kThreads) outputs_mma_kernel(OutputsParams p, stage::Layout layout, int stages_per_split) {
  extern __shared__ __align__(16) char smem[];
  auto& sh = *reinterpret_cast<OutputsSmem<Bits, D, Group>*>(smem);
  char* buffers = stage::buffers<OutputsSmem<Bits, D, Group>>(smem);
  const RegionShape s = p.values.shape;
  const int r = blockIdx.y, split = blockIdx.x;
  constexpr int kTiles = D / 64;
  const int total = (s.tokens + stage::kTokens - 1) / stage::kTokens;
  const int first = split * stages_per_split, last = min(total, first + stages_per_split);
  float acc[kTiles][2][stage::kLaneHeads<Group>] = {};
  auto buffer = [&](int i) { return buffers + (i % stage::kBuffers) * layout.bytes; };
  for (int i = 0; i < stage::kBuffers - 1; ++i) {
    if (first + i < last) stage::value_issue<Group>(buffer(i), layout, p.values, p.token_scale, p.probs, r, (first + i) * stage::kTokens);
    copy_commit();
  }
  copy_wait<stage::kBuffers - 2>();
  __syncthreads();
  stage::Meta m;
  if (first < last) {
    stage::value_meta_load<D>(buffer(0), layout, p.values, r, first * stage::kTokens, m, sh.warp_count);
    stage::value_meta_store<D>(m, sh.meta[0]);
  }
  for (int st = first; st < last; ++st) {
    const int i = st - first, t0 = st * stage::kTokens;
    copy_wait<stage::kBuffers - 3>();
    __syncthreads();
    if (st + stage::kBuffers - 1 < last)
      stage::value_issue<Group>(buffer(i + stage::kBuffers - 1), layout, p.values, p.token_scale, p.probs, r, t0 + (stage::kBuffers - 1) * stage::kTokens);
    copy_commit();
    const stage::ValueSources src = stage::value_sources(p.values, p.token_scale, r, t0);
    for (int k = threadIdx.x; k < Group * stage::kTokens; k += stage::kThreads) {
      const int h = k / stage::kTokens, tok = k % stage::kTokens;
      sh.p[h][tok] = tok < src.n ? stage::value_probs<Group>(buffer(i), layout, p.probs, s, r, t0, h)[tok] : 0.0f;
    }
    __syncthreads();
    stage::probs_prepare<Bits, Group>(sh.p, src.token_scale ? stage::landed<float>(buffer(i), layout.token_scale, src.token_scale) : nullptr,
                                      src.n, s.group_size, sh.probs, sh.pscale);
    if (st + 1 < last) stage::value_meta_load<D>(buffer(i + 1), layout, p.values, r, t0 + stage::kTokens, m, sh.warp_count);
    stage::value_compute<Bits, D, Group>(stage::landed<std::uint32_t>(buffer(i), layout.codes, src.codes), sh.meta[i % 2], sh.probs,
                                         s.group_size, src.n, acc);
    if (st + 1 < last) stage::value_meta_store<D>(m, sh.meta[(i + 1) % 2]);
  }
  stage::for_lane_outputs<D, Group>(acc, [&](float x, int h, int c) {
    p.partial[((static_cast<long long>(split) * gridDim.y + r) * Group + h) * D + c] = x;
  });
}

template <int Bits, int D, int Group>
cudaError_t launch(const OutputsParams& p, cudaStream_t stream) {
  const RegionShape& s = p.values.shape;
  const stage::Layout layout = stage::layout(s, p.token_scale != nullptr, Group);
  const std::size_t smem = stage::smem_bytes<OutputsSmem<Bits, D, Group>>(layout.bytes);
  auto kernel = outputs_mma_kernel<Bits, D, Group>;
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), stage::kThreads, smem, info));
  const int total = std::max(1, (s.tokens + stage::kTokens - 1) / stage::kTokens);
  const int per_split = (total + std::min(p.splits, total) - 1) / std::min(p.splits, total);
  const int splits = (total + per_split - 1) / per_split;
  kernel<<<dim3(static_cast<unsigned>(splits), static_cast<unsigned>(p.values.regions)), stage::kThreads, smem, stream>>>(p, layout, per_split);
  KVQ_CUDA_TRY(cudaGetLastError());
  const long long n = static_cast<long long>(p.values.regions) * Group * D;
  sum_splits<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(p.partial, splits, n, p.outputs);
  return cudaGetLastError();
}

}  // namespace

bool outputs_mma_supported(const RegionShape& s, int group) {
  const bool bits = s.bits == 2 || s.bits == 3 || s.bits == 4 || s.bits == 8;
  const bool dims = s.head_dim == 64 || s.head_dim == 128;
  const bool groups = s.group_size == 32 || s.group_size == 64 || s.group_size == 128 || (s.group_size == 16 && s.bits != 3);
  return bits && dims && groups && !s.channel_axis && s.tokens % s.group_size == 0 && group >= 1 && group <= 8;
}

cudaError_t outputs_mma(const OutputsParams& p, cudaStream_t stream) {
  const RegionShape& s = p.values.shape;
  if (!outputs_mma_supported(s, p.group) || p.splits < 1) return cudaErrorInvalidValue;
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, KVQ_DISPATCH_GROUP(p.group, H, return launch<B, D, H>(p, stream);)))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
