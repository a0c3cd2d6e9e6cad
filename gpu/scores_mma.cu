// q . K^T over channel-axis keys on the tensor cores, with lane-owned chunks (gpu/key_units.cuh; int8
// at head_dim 128, gpu/key_bytes.cuh): a warp takes 32 tokens at a time and the block's 4 warps build
// its B together once per run, from q copied ahead of their first units. The loads of the unit two
// ahead are issued before a unit is multiplied, and short runs are prefetched into L2 while the
// previous kernel finishes.
#include <algorithm>
#include <cstdint>

#include "core/packed.h"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/launch.h"
#include "gpu/key_bytes.cuh"
#include "gpu/key_units.cuh"
#include "gpu/pipeline.cuh"
#include "gpu/region_arrays.cuh"
#include "gpu/scores_mma.h"

namespace kvq::gpu {
namespace {

constexpr int kThreads = 128;
// Units a block's prefetch covers (prefetch_first_units): three a warp, its load buffers' count. The
// launcher prefetches only runs that fit in them.
constexpr int kPrefetchUnits = 3 * (kThreads / 32);

// The block's first kPrefetchUnits units named to L2 before the
// wait: they may come from memory while the previous kernel in the stream finishes, since L2 is where
// every write lands (no stale copy can be read) and a prefetch writes no register. Only kernel arguments
// are read; hybrid zero points (found through a global read) are not prefetched. Lines holding any
// byte of the units' codes, scales and (asym) zero points, so no address outside an array's pages.
template <int Bits, int D, class Meta, GroupMode Mode>
__device__ __forceinline__ void prefetch_first_units(const ScoresParams& p, int units_per_block) {
  const RegionShape& s = p.keys.shape;
  const int r = blockIdx.y, units = (s.tokens + key_units::kUnit - 1) / key_units::kUnit;
  const int u0 = blockIdx.x * units_per_block, u1 = min(min(units, u0 + units_per_block), u0 + kPrefetchUnits);
  if (u0 >= u1) return;
  const long long tok0 = u0 * key_units::kUnit, tok1 = min(s.tokens, u1 * key_units::kUnit);
  // Bytes [tok0 * per_token, tok1 * per_token) of an array starting at `array`.
  const auto lines = [&](const void* array, long long per_token) {
    const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(array);
    const std::uintptr_t first = (at + tok0 * per_token) >> 7, last = (at + tok1 * per_token - 1) >> 7;
    for (std::uintptr_t l = first + threadIdx.x; l <= last; l += kThreads) asm volatile("prefetch.global.L2 [%0];" ::"l"(l << 7));
  };
  const long long metas = static_cast<long long>(D / s.group_size) * sizeof(Meta);
  const RegionArrays<Meta> a = argument_arrays<Meta>(p.keys, r);
  lines(a.codes, (D / 32) * Bits * 4);
  lines(a.scales, metas);
  if constexpr (Mode == GroupMode::asym) lines(a.zeros, metas);
}

// Units [u0, u1) of region blockIdx.y; warp w takes units u0 + w, u0 + w + 4, ... Prefetch: see
// prefetch_first_units.
template <int Bits, int D, class Meta, GroupMode Mode, bool Prefetch>
__global__ void __launch_bounds__(kThreads, 4) scores_mma_kernel(ScoresParams p, int units_per_block, std::uint32_t ones) {
  if constexpr (Prefetch) prefetch_first_units<Bits, D, Meta, Mode>(p, units_per_block);
  wait_for_prior_kernels();
  using Keys = key_units::LaneKeys<Bits, D, Meta, Mode>;
  constexpr int kWarps = kThreads / 32, kUnit = key_units::kUnit;
  const int r = blockIdx.y, warp = threadIdx.x >> 5;
  Keys keys;
  keys.init(p.keys, r);
  const int tokens = keys.tokens;
  float* out = p.scores + static_cast<long long>(r) * tokens;
  const float* token_scale = p.token_scale ? p.token_scale + static_cast<long long>(r) * tokens : nullptr;
  const int units = (tokens + kUnit - 1) / kUnit;
  const int u1 = min(units, (blockIdx.x + 1) * units_per_block);
  int u = blockIdx.x * units_per_block + warp;
  // Load buffers taken in turn: the loads of the unit kAhead ahead go out before a unit's multiply,
  // so each warp keeps kAhead units in flight (one for 8-bit codes, whose buffers are 4x larger).
  constexpr int kAhead = Bits == 8 ? 1 : 2;
  typename Keys::Loads buf0, buf1, buf2;
  // Whole units without per-row checks: 11% faster for hybrid keys at N = 32768, the same for asym
  // ones, 2% slower for 3-bit symmetric ones (H100, docs/PERF.md): symmetric keys keep the checked
  // loads.
  auto fetch = [&](int v, typename Keys::Loads& into) {
    if constexpr (Mode == GroupMode::sym) keys.load(v, into);
    else keys.load_split(v, into);
  };
  // q goes out first, into the warp's shared copy (key_units::copy_query), then the first units' loads.
  __shared__ __align__(16) float query_copy[kWarps][D];
  key_units::copy_query<D>(p.queries + static_cast<long long>(r) * D, query_copy[warp]);
  if (u < u1) fetch(u, buf0);
  if (kAhead == 2 && u + kWarps < u1) fetch(u + kWarps, buf1);
  // B goes to shared memory (read back per step): its registers would cost the third load buffer or
  // a resident block. It depends only on q and the lane, so the block's warps build a quarter each
  // while their first loads are in flight (H100: 9.16 -> 8.75 us at N = 4096, 29.8 -> 29.6 at 32768,
  // against warp 0 building all of it).
  __shared__ typename Keys::BlockB block_b;
  __shared__ typename Keys::QueryShares shares;
  copy_wait<0>();
  __syncwarp();
  keys.set_block_query(query_copy[warp], warp, p.keys, block_b, shares);

  auto multiply = [&](int u, const typename Keys::Loads& cur) {
    float total = keys.score(u, cur, ones);
    const int tok = u * kUnit + keys.g + 8 * keys.t;
    if (tok < tokens) {
      // Token scales (rotation family) multiply the whole score back: s_t = sigma_t * (q' . x'_t).
      if (token_scale) total *= token_scale[tok];
      out[tok] = total;
    }
  };

  if constexpr (kAhead == 1) {
    while (u < u1) {
      if (u + kWarps < u1) fetch(u + kWarps, buf1);
      multiply(u, buf0);
      u += kWarps;
      if (u >= u1) break;
      if (u + kWarps < u1) fetch(u + kWarps, buf0);
      multiply(u, buf1);
      u += kWarps;
    }
  } else {
    while (u < u1) {
      if (u + 2 * kWarps < u1) fetch(u + 2 * kWarps, buf2);
      multiply(u, buf0);
      u += kWarps;
      if (u >= u1) break;
      if (u + 2 * kWarps < u1) fetch(u + 2 * kWarps, buf0);
      multiply(u, buf1);
      u += kWarps;
      if (u >= u1) break;
      if (u + 2 * kWarps < u1) fetch(u + 2 * kWarps, buf1);
      multiply(u, buf2);
      u += kWarps;
    }
  }
}

template <int Bits, int D, class Meta, GroupMode Mode, bool Prefetch>
cudaError_t launch_with(const ScoresParams& p, int per_block, dim3 grid, cudaStream_t stream) {
  return launch_kernel(scores_mma_kernel<Bits, D, Meta, Mode, Prefetch>, grid, dim3(kThreads), 0, stream, p, per_block,
                       pairs::kOnes);  // ones: see pairs::decode
}

template <int Bits, int D, class Meta, GroupMode Mode>
cudaError_t launch(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  auto kernel = scores_mma_kernel<Bits, D, Meta, Mode, false>;  // __launch_bounds__ gives both forms 4 blocks an SM
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kThreads, 0, info));
  // One wave of resident blocks, each taking a contiguous run of units (4 warps x several each), so
  // each block builds its B once per run.
  const int units = (s.tokens + key_units::kUnit - 1) / key_units::kUnit;
  const int want = info.wave_per_region(p.keys.regions);
  const int per_block = std::max(kThreads / 32, (units + want - 1) / want);
  const dim3 grid(static_cast<unsigned>((units + per_block - 1) / per_block), static_cast<unsigned>(p.keys.regions));
  // Runs of at most three units a warp start with their whole run prefetched (prefetch_first_units):
  // H100, paper shape, N = 4096 (two a warp) 7.30 -> 6.52 us; longer runs are slower with it (N = 8192,
  // four a warp: 9.54 -> 10.1), so they start without (docs/PERF.md).
  if (per_block <= kPrefetchUnits) return launch_with<Bits, D, Meta, Mode, true>(p, per_block, grid, stream);
  return launch_with<Bits, D, Meta, Mode, false>(p, per_block, grid, stream);
}

template <int Bits, int D, class Meta>
cudaError_t by_mode(const ScoresParams& p, cudaStream_t stream) {
  KVQ_DISPATCH_MODE(p.keys.shape.mode, Mode, { return launch<Bits, D, Meta, Mode>(p, stream); })
  return cudaErrorInvalidValue;
}

}  // namespace

bool scores_mma_supported(const RegionShape& s, int group) {
  // A lane's chunk (half a chunk at head_dim 64) must lie in one group.
  const bool groups = (s.group_size == 32 || s.group_size == 64 || s.group_size == 128) && s.group_size <= s.head_dim;
  // One query head per kv head: with GQA groups the per-head mmas made it slower than the staged
  // kernel (docs/PERF.md), so only group 1 is built.
  return bits_built(s.bits) && head_dim_built(s.head_dim) && groups && s.channel_axis && group == 1;
}

cudaError_t scores_mma(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  if (!scores_mma_supported(s, p.group)) return cudaErrorInvalidValue;
  if (s.tokens == 0) return cudaSuccess;
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, {
    if (s.meta_fp16) return by_mode<B, D, std::uint16_t>(p, stream);
    return by_mode<B, D, std::uint32_t>(p, stream);
  }))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
