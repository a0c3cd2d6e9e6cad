// q . K^T over channel-axis keys on the tensor cores, with lane-owned chunks (gpu/key_units.cuh; int8
// at head_dim 128, gpu/key_bytes.cuh): a warp takes 32 tokens at a time and the block's 4 warps build
// its B together once per run, from q copied ahead of their first units. The loads of the unit two
// ahead are issued before a unit is multiplied, and short runs are prefetched into L2 while the
// previous kernel finishes. Long runs of 3-bit keys take scores_ring_kernel: each warp's whole units
// through its own ring of shared-memory stages, at twice the resident warps, each warp's first unit
// prefetched where the caller asks (ScoresParams::prefetch_first_units).
#include <algorithm>
#include <cstdint>
#include <type_traits>

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

// The block's first kPrefetchUnits units' codes, scales and (asym) zero points named to L2 before the
// wait (prefetch_lines says why that is safe). Only kernel arguments are read; hybrid zero points
// (found through a global read) are not prefetched.
template <int Bits, int D, class Meta, GroupMode Mode>
__device__ __forceinline__ void prefetch_first_units(const ScoresParams& p, int units_per_block) {
  const RegionShape& s = p.keys.shape;
  const int r = blockIdx.y, units = (s.tokens + key_units::kUnit - 1) / key_units::kUnit;
  const int u0 = blockIdx.x * units_per_block, u1 = min(min(units, u0 + units_per_block), u0 + kPrefetchUnits);
  if (u0 >= u1) return;
  const long long tok0 = u0 * key_units::kUnit, tok1 = min(s.tokens, u1 * key_units::kUnit);
  // Bytes [tok0 * per_token, tok1 * per_token) of an array starting at `array`.
  const auto lines = [&](const void* array, long long per_token) {
    prefetch_lines(static_cast<const char*>(array) + tok0 * per_token, (tok1 - tok0) * per_token, threadIdx.x, kThreads);
  };
  const long long metas = static_cast<long long>(D / s.group_size) * sizeof(Meta);
  const RegionArrays<Meta> a = argument_arrays<Meta>(p.keys, r);
  lines(a.codes, (D / 32) * Bits * 4);
  lines(a.scales, metas);
  if constexpr (Mode == GroupMode::asym) lines(a.zeros, metas);
}

// Unit u's scores (the lanes' tokens that exist) into out, a region's [tokens] scores; token_scale:
// the region's [tokens] scales or null.
template <class Keys>
__device__ __forceinline__ void write_scores(const Keys& keys, int u, const typename Keys::Loads& cur, std::uint32_t ones, float* out,
                                             const float* token_scale) {
  float total = keys.score(u, cur, ones);
  const int tok = u * key_units::kUnit + keys.g + 8 * keys.t;
  if (tok < keys.tokens) {
    // Token scales (rotation family) multiply the whole score back: s_t = sigma_t * (q' . x'_t).
    if (token_scale) total *= token_scale[tok];
    out[tok] = total;
  }
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

  auto multiply = [&](int u, const typename Keys::Loads& cur) { write_scores(keys, u, cur, ones, out, token_scale); };

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

// The ring (scores_ring_kernel): a warp copies its whole units with 16-byte cp.async pieces into its
// own kRingStages stages, kRingStages - 1 ahead, and each lane reads its rows from the landed stage.
// No load buffers stay in registers, so the kernel fits 64 registers and 8 blocks (32 warps) an SM,
// twice the register form's; with more stages or fewer blocks it was no faster (H100, paper shape,
// N = 32768: 2 stages at 8 blocks 24.0-24.1 us, 3 at 8 24.2, 3 at 6 24.5, 4 at 4 27.4, against
// 24.6 for the register form; H200: 18.5-18.6 against 19.3; docs/PERF.md). Its first units wait for
// the ring to fill, where the register form prefetches short runs: at 4096 and 8192 tokens (1 and 2
// units a warp) it was 8% and 1% slower, at 16384 (4) 1.9-2.5% faster (H100; 2.6-3.6% on an H200),
// so it takes only runs of kRingMinUnits units a warp or more. Built for 3-bit codes (the paper's
// keys, the only width timed) at head_dim 128 with fp16 metadata.
constexpr int kRingStages = 2;
constexpr int kRingBlocks = 8;
constexpr int kRingMinUnits = 4;
// Units a warp named to L2 before the wait where the caller asks (ScoresParams::prefetch_first_units):
// the unfused InnerQ attention at N = 32768 took 48.6 us with 1, 48.8 with 2, 49.2 with 4 and with
// none (H100, paper shape, two rounds in one run; docs/PERF.md).
constexpr int kRingPrefetchUnits = 1;

template <int Bits, int D, class Meta>
constexpr bool ring_built() {
  return Bits == 3 && D == 128 && std::is_same<Meta, std::uint16_t>::value;
}

// One whole unit in shared memory: its codes ([32 tokens][D / 32 chunks][Bits words], as in global
// memory), scales ([32 tokens][D / group_size]) and, for asym keys, zero points (the same shape).
// Packed, so that every stage starts on a 128-byte line: with the zero points' slot kept for sym
// keys (1808 bytes a stage) the ring ran 4.5-5.1% slower than the register form, packed (1792) 3.9%
// faster (H200, N = 32768, one call).
template <int Bits, int D, class Meta, GroupMode Mode>
struct RingStage {
  static constexpr int kCodeBytes = key_units::kUnit * (D / 32) * Bits * 4;
  static constexpr int kMetaBytes = key_units::kUnit * (D / 32) * static_cast<int>(sizeof(Meta));  // groups of 32: the most
  static constexpr int kMetas = kMetaBytes / static_cast<int>(sizeof(Meta));
  alignas(16) std::uint32_t codes[kCodeBytes / 4];
  alignas(16) Meta metas[Mode == GroupMode::asym ? 2 * kMetas : kMetas];  // scales, then zero points for asym keys
  __device__ Meta* scales() { return metas; }
  __device__ const Meta* scales() const { return metas; }
  __device__ Meta* zeros() { return metas + kMetas; }
  __device__ const Meta* zeros() const { return metas + kMetas; }
};

// The lane's four rows of a landed stage, into the registers KeyUnits::load fills. 3-bit rows are
// three 4-byte loads, lanes 12 words apart a row and 3 a chunk: 32 distinct banks.
template <int Bits, int D, class Meta, GroupMode Mode>
__device__ __forceinline__ void read_stage(const key_units::LaneKeys<Bits, D, Meta, Mode>& keys, const RingStage<Bits, D, Meta, Mode>& stage,
                                           key_units::UnitLoads<Bits, Meta, Mode>& into) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = keys.g + 8 * i, meta = row * keys.per_row + keys.grp;
#pragma unroll
    for (int k = 0; k < Bits; ++k) into.w[i][k] = stage.codes[(row * (D / 32) + keys.chunk) * Bits + k];
    into.scale[i] = stage.scales()[meta];
    if constexpr (Mode == GroupMode::asym) into.zero[i] = stage.zeros()[meta];
  }
}

// The first Count whole units of this warp in scores_ring_kernel named to L2 before the wait, as
// prefetch_first_units does for a block's (same reasoning: kernel arguments only, no hybrid zero
// points, only lines holding the units' bytes).
template <int Bits, int D, class Meta, GroupMode Mode, int Count>
__device__ __forceinline__ void prefetch_warp_units(const ScoresParams& p, int units_per_block) {
  constexpr int kWarps = kThreads / 32, kUnit = key_units::kUnit;
  const RegionShape& s = p.keys.shape;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, whole = s.tokens / kUnit;
  const int u0 = blockIdx.x * units_per_block, w1 = min(whole, u0 + units_per_block);
  const long long code_bytes = kUnit * (D / 32) * Bits * 4, meta_bytes = static_cast<long long>(kUnit) * (D / s.group_size) * sizeof(Meta);
  const RegionArrays<Meta> a = argument_arrays<Meta>(p.keys, blockIdx.y);
  // Unit v's bytes of an array holding `bytes` a unit.
  const auto lines = [&](const void* array, long long bytes, long long v) { prefetch_lines(static_cast<const char*>(array) + v * bytes, bytes, lane, 32); };
#pragma unroll
  for (int j = 0; j < Count; ++j) {
    const int v = u0 + warp + kWarps * j;
    if (v >= w1) break;
    lines(a.codes, code_bytes, v);
    lines(a.scales, meta_bytes, v);
    if constexpr (Mode == GroupMode::asym) lines(a.zeros, meta_bytes, v);
  }
}

// As scores_mma_kernel (units [u0, u1) of region blockIdx.y, warp w taking u0 + w, u0 + w + 4, ...),
// whole units through the warp's ring; a region's partial last unit takes the global loads. Every
// region's arrays start on 16 bytes (aligned16), so a whole unit's arrays are whole 16-byte pieces.
// Prefetch: units a warp named to L2 before the wait (ScoresParams::prefetch_first_units).
template <int Bits, int D, class Meta, GroupMode Mode, int Prefetch>
__global__ void __launch_bounds__(kThreads, kRingBlocks) scores_ring_kernel(ScoresParams p, int units_per_block, std::uint32_t ones) {
  if constexpr (Prefetch > 0) prefetch_warp_units<Bits, D, Meta, Mode, Prefetch>(p, units_per_block);
  wait_for_prior_kernels();
  using Keys = key_units::LaneKeys<Bits, D, Meta, Mode>;
  using Stage = RingStage<Bits, D, Meta, Mode>;
  constexpr int kWarps = kThreads / 32, kUnit = key_units::kUnit;
  const int r = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  Keys keys;
  keys.init(p.keys, r);
  const int tokens = keys.tokens;
  float* out = p.scores + static_cast<long long>(r) * tokens;
  const float* token_scale = p.token_scale ? p.token_scale + static_cast<long long>(r) * tokens : nullptr;
  const int units = (tokens + kUnit - 1) / kUnit, whole = tokens / kUnit;
  const int u0 = blockIdx.x * units_per_block, u1 = min(units, u0 + units_per_block), w1 = min(u1, whole);
  const int n = w1 > u0 + warp ? (w1 - u0 - warp + kWarps - 1) / kWarps : 0;  // the warp's whole units
  extern __shared__ __align__(16) unsigned char ring_smem[];  // [kWarps][kRingStages] stages
  Stage* stages = reinterpret_cast<Stage*>(ring_smem) + warp * kRingStages;
  // q's copy goes first, as in scores_mma_kernel: the oldest cp.async group.
  __shared__ __align__(16) float query_copy[kWarps][D];
  key_units::copy_query<D>(p.queries + static_cast<long long>(r) * D, query_copy[warp]);
  const int meta_pieces = kUnit * keys.per_row * static_cast<int>(sizeof(Meta)) / 16;
  // The warp's whole unit j into `stage`, as one cp.async group.
  auto copy_unit = [&](int j, Stage& stage) {
    const long long v = u0 + warp + kWarps * j;
    const unsigned codes = static_cast<unsigned>(__cvta_generic_to_shared(stage.codes));
    const char* src = reinterpret_cast<const char*>(keys.codes) + v * Stage::kCodeBytes;
#pragma unroll
    for (int i = 0; i < Stage::kCodeBytes / 16 / 32; ++i) copy16_fetch256(codes + 16 * (lane + 32 * i), src + 16 * (lane + 32 * i));
    const long long meta0 = v * kUnit * keys.per_row;
    for (int i = lane; i < meta_pieces; i += 32) {
      copy16_fetch256(static_cast<unsigned>(__cvta_generic_to_shared(stage.scales())) + 16 * i, reinterpret_cast<const char*>(keys.scales + meta0) + 16 * i);
      if constexpr (Mode == GroupMode::asym)
        copy16_fetch256(static_cast<unsigned>(__cvta_generic_to_shared(stage.zeros())) + 16 * i, reinterpret_cast<const char*>(keys.zeros + meta0) + 16 * i);
    }
    copy_commit();
  };
#pragma unroll
  for (int s = 0; s < kRingStages - 1; ++s) {
    if (s < n) copy_unit(s, stages[s]);
    else copy_commit();
  }
  __shared__ typename Keys::BlockB block_b;
  __shared__ typename Keys::QueryShares shares;
  copy_wait<kRingStages - 1>();  // q has landed; the first units may not have
  __syncwarp();
  keys.set_block_query(query_copy[warp], warp, p.keys, block_b, shares);
  typename Keys::Loads cur;
  for (int j = 0; j < n; ++j) {
    ring_refill<kRingStages>(j, j + kRingStages - 1 < n, stages, [&](Stage& stage) { copy_unit(j + kRingStages - 1, stage); });
    read_stage(keys, ring_landed<kRingStages>(j, stages), cur);
    write_scores(keys, u0 + warp + kWarps * j, cur, ones, out, token_scale);
  }
  if (whole < u1 && whole >= u0 && (whole - u0) % kWarps == warp) {
    keys.load(whole, cur);
    write_scores(keys, whole, cur, ones, out, token_scale);
  }
}

// Launches the ring where it applies (ring_built, arrays on 16 bytes, runs of kRingMinUnits units a
// warp or more in its wave); `taken` says whether it did.
template <int Bits, int D, class Meta, GroupMode Mode, int Prefetch>
cudaError_t launch_ring(const ScoresParams& p, cudaStream_t stream, bool& taken) {
  taken = false;
  if constexpr (ring_built<Bits, D, Meta>()) {
    if (!aligned16(p.keys)) return cudaSuccess;
    const auto kernel = scores_ring_kernel<Bits, D, Meta, Mode, Prefetch>;
    static_assert(sizeof(RingStage<Bits, D, Meta, Mode>) % 128 == 0, "ring stages start on 128-byte lines (see RingStage)");
    const std::size_t smem = static_cast<std::size_t>(kThreads / 32) * kRingStages * sizeof(RingStage<Bits, D, Meta, Mode>);
    // The most shared memory for the carveout, so that the registers decide the resident blocks.
    LaunchInfo info;
    KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kThreads, smem, info, /*max_shared=*/true));
    const int units = (p.keys.shape.tokens + key_units::kUnit - 1) / key_units::kUnit;
    const int want = info.wave_per_region(p.keys.regions);
    const int per_block = std::max(kThreads / 32, (units + want - 1) / want);
    if (per_block < kThreads / 32 * kRingMinUnits) return cudaSuccess;
    taken = true;
    const dim3 grid(static_cast<unsigned>((units + per_block - 1) / per_block), static_cast<unsigned>(p.keys.regions));
    return launch_kernel(kernel, grid, dim3(kThreads), smem, stream, p, per_block, pairs::kOnes);
  }
  return cudaSuccess;
}

template <int Bits, int D, class Meta, GroupMode Mode, bool Prefetch>
cudaError_t launch_with(const ScoresParams& p, int per_block, dim3 grid, cudaStream_t stream) {
  return launch_kernel(scores_mma_kernel<Bits, D, Meta, Mode, Prefetch>, grid, dim3(kThreads), 0, stream, p, per_block,
                       pairs::kOnes);  // ones: see pairs::decode
}

template <int Bits, int D, class Meta, GroupMode Mode>
cudaError_t launch(const ScoresParams& p, cudaStream_t stream) {
  bool ring = false;
  if (p.prefetch_first_units) KVQ_CUDA_TRY((launch_ring<Bits, D, Meta, Mode, kRingPrefetchUnits>(p, stream, ring)));
  else KVQ_CUDA_TRY((launch_ring<Bits, D, Meta, Mode, 0>(p, stream, ring)));
  if (ring) return cudaSuccess;
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
