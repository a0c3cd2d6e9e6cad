// p . V^ over token-axis values on the tensor cores, with lane-owned chunks. One query head per kv
// head (outputs_warp_kernel): each warp streams its own 128-token stretches on gpu/value_tiles.cuh
// (int8 mmas, gpu/byte_planes.cuh), with no barrier per stretch. GQA groups (outputs_mma_kernel, fp16
// mmas on gpu/mantissa_pairs.cuh): a block walks
// its run of 128-token stretches; per stretch, warp u turns tile u's probabilities into B fragments
// for every head (range-scaled per tile, so small probabilities keep their bits), one barrier, then
// each warp multiplies its m-tiles of 16 channels: lane t loads the chunk of tile t for its two
// channels straight from global memory (a stretch ahead, with the probabilities and scales, so the
// loads overlap the current stretch's work), and the group's scale multiplies the lane's accumulator.
// Codes decode in place into fp16 mantissas (one LOP3 per two codes); each tile's constant from A's
// 1s is taken back with its sum. Outputs stay in registers; runs are summed in order.

#include <cstddef>
#include <cstdint>

#include "core/packed.h"
#include "gpu/cuda_check.h"
#include "gpu/dispatch.cuh"
#include "gpu/mantissa_pairs.cuh"
#include "gpu/launch.h"
#include "gpu/meta.cuh"
#include "gpu/outputs_mma.h"
#include "gpu/reduce.cuh"
#include "gpu/value_tiles.cuh"

namespace kvq::gpu {

namespace {

constexpr int kThreads = 128;
constexpr int kStretch = value_tiles::kStretch;  // tokens per block iteration: 4 tiles of 32, one per lane of a quad

template <int Bits, int D, int Group>
struct OutputsShared {
  static constexpr int kSteps = pairs::kPairs<Bits, false> / 2;
  // B fragments per (buffer, head, step, slot): slot 2u + part for unit u's live column, slot 8 zero.
  uint2 b[2][Group][kSteps][9];
  float inv_range[2][Group][4];  // 1 / the power of two tile u's probabilities were scaled by
  float tile_sum[2][Group][4];   // sum of tile u's scaled probabilities
  float tile_constant[2][Group][4];  // what A's 1s add over tile u: its scaled p times pairs::weight_sum, summed (fp32, ~2^-22 off hi + lo)
  unsigned asym[2][4][D / 32];   // hybrid: asymmetric channels of each G-token block of the stretch
  float p[4][Group][32];         // warp u's scratch: tile u's scaled probabilities
};

// What thread (warp u, lane) reads for stretch t0's set-up, loaded a stretch ahead and only used when
// the stretch starts (an arithmetic use right after a load would wait for it there): its token's
// probabilities and token scale, and, for hybrid, the raw scales of channel threadIdx.x in each
// zero-block of the stretch, whose sign bits mark the asymmetric channels.
template <int Group>
struct StretchInputs {
  float p[Group];
  float sigma;
  bool live;
  std::uint32_t scale_bits[kStretch / 32];
};

template <int D, int Group>
__device__ __forceinline__ void load_stretch(const OutputsParams& p, int r, int t0, StretchInputs<Group>& in) {
  const RegionShape& s = p.values.shape;
  const int tok = t0 + threadIdx.x;
  in.live = tok < s.tokens;
  const int at = min(tok, s.tokens - 1);  // past the end: a token that exists, weighted 0
  in.sigma = p.token_scale ? __ldg(p.token_scale + static_cast<long long>(r) * s.tokens + at) : 1.0f;
#pragma unroll
  for (int h = 0; h < Group; ++h) in.p[h] = __ldg(p.probs + (static_cast<long long>(r) * Group + h) * s.tokens + at);
  if (s.mode == GroupMode::hybrid && threadIdx.x < D) {
    const int blocks = s.tokens / s.group_size;
#pragma unroll
    for (int k = 0; k < kStretch / 32; ++k) {
      if (k >= kStretch / s.group_size) break;
      const long long i = static_cast<long long>(r) * s.group_stride() + static_cast<long long>(min(t0 / s.group_size + k, blocks - 1)) * D + threadIdx.x;
      in.scale_bits[k] = s.meta_fp16 ? __ldg(static_cast<const std::uint16_t*>(p.values.scales) + i) : __ldg(static_cast<const std::uint32_t*>(p.values.scales) + i);
    }
  }
}

// Warp u's share of a stretch's set-up: tile u's probabilities into B fragments, and (hybrid) the
// asymmetric-channel masks of the stretch's zero-blocks.
template <int Bits, int D, int Group>
__device__ void prepare_stretch(const StretchInputs<Group>& in, float weight_sum, int blocks_in_stretch, bool hybrid, std::uint32_t sign_mask, int buf,
                                OutputsShared<Bits, D, Group>& sh) {
  using Sh = OutputsShared<Bits, D, Group>;
  const int lane = threadIdx.x & 31, u = threadIdx.x >> 5;
#pragma unroll
  for (int h = 0; h < Group; ++h) {
    const float x = in.live ? in.p[h] * in.sigma : 0.0f;  // token scales (rotation family) fold into the weights
    float m = fabsf(x);
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    const float range = pairs::range_scale(m);
    float sum = x * range, constant = sum * weight_sum;
    sh.p[u][h][lane] = sum;
    for (int off = 16; off > 0; off >>= 1) {
      sum += __shfl_xor_sync(0xffffffffu, sum, off);
      constant += __shfl_xor_sync(0xffffffffu, constant, off);
    }
    if (lane == 0) sh.inv_range[buf][h][u] = 1.0f / range, sh.tile_sum[buf][h][u] = sum, sh.tile_constant[buf][h][u] = constant;
  }
  __syncwarp();
  for (int i = lane; i < Group * Sh::kSteps * 2; i += 32) {
    const int part = i & 1, j = (i >> 1) % Sh::kSteps, h = i / (2 * Sh::kSteps);
    sh.b[buf][h][j][2 * u + part] = make_uint2(pairs::b_pair<Bits, false>(sh.p[u][h], 2 * j, part), pairs::b_pair<Bits, false>(sh.p[u][h], 2 * j + 1, part));
  }
  if (hybrid && threadIdx.x < D)
#pragma unroll
    for (int k = 0; k < kStretch / 32; ++k) {
      if (k >= blocks_in_stretch) break;
      const unsigned ballot = __ballot_sync(0xffffffffu, (in.scale_bits[k] & sign_mask) != 0);
      if (lane == 0) sh.asym[buf][k][u] = ballot;
    }
}

template <int Bits, int D, int Group>
__global__ void __launch_bounds__(kThreads, Group == 1 ? 6 : 4) outputs_mma_kernel(OutputsParams p, int stretches_per_split, std::uint32_t ones) {
  using Sh = OutputsShared<Bits, D, Group>;
  constexpr int kTiles = D / 64;  // m-tiles of 16 channels per warp
  __shared__ Sh sh;
  const RegionShape s = p.values.shape;
  const int r = blockIdx.y, split = blockIdx.x, G = s.group_size;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int slot = (g >> 1) == t ? 2 * t + (g & 1) : 8;
  const int stretches = (s.tokens + kStretch - 1) / kStretch, tiles = (s.tokens + 31) / 32, blocks = s.tokens / G;
  const int first = split * stretches_per_split, last = min(stretches, first + stretches_per_split);
  const float offset = static_cast<float>(packed::sym_offset(Bits, s.twos));
  const std::uint32_t sign_mask = s.meta_fp16 ? packed::kHalfSignBit : packed::kFloatSignBit;
  const long long groups0 = static_cast<long long>(r) * s.group_stride();
  const std::uint32_t* codes = p.values.codes + static_cast<long long>(r) * s.code_stride();
  float acc[Group][kTiles][2] = {};
  const float weight_sum = pairs::weight_sum<Bits, false>(lane);  // lane = the token's position in its tile
  for (int i = threadIdx.x; i < 2 * Group * Sh::kSteps; i += kThreads) sh.b[i / (Group * Sh::kSteps)][(i / Sh::kSteps) % Group][i % Sh::kSteps][8] = make_uint2(0, 0);

  // Lane t's tile of stretch st (clamped: past the end its probabilities are 0) and its group.
  auto tile_of = [&](int st) { return min(st * (kStretch / 32) + t, tiles - 1); };
  auto block_of = [&](int st) { return min((st * kStretch + 32 * t) / G, blocks - 1); };
  std::uint32_t w[kTiles][2][Bits], next[kTiles][2][Bits];
  float scale[kTiles][2], next_scale[kTiles][2];
  bool sign[kTiles][2], next_sign[kTiles][2];
  // The codes and scales of stretch st, loaded one stretch ahead so they are in flight during the
  // previous stretch's work.
  auto load = [&](int st) {
    const int tile = tile_of(st), blk = block_of(st);
#pragma unroll
    for (int m = 0; m < kTiles; ++m)
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int ch = 16 * (warp + 4 * m) + g + 8 * k;
        const std::uint32_t* src = codes + (static_cast<long long>(tile) * D + ch) * Bits;
#pragma unroll
        for (int b = 0; b < Bits; ++b) next[m][k][b] = __ldg(src + b);
        next_scale[m][k] = meta_value(p.values.scales, groups0 + static_cast<long long>(blk) * D + ch, s.meta_fp16, next_sign[m][k]);
      }
  };
  StretchInputs<Group> in, next_in;
  if (first < last) load(first), load_stretch<D, Group>(p, r, first * kStretch, next_in);
  for (int st = first; st < last; ++st) {
    const int t0 = st * kStretch, buf = st & 1, blk = block_of(st);
#pragma unroll
    for (int m = 0; m < kTiles; ++m)
#pragma unroll
      for (int k = 0; k < 2; ++k) {
#pragma unroll
        for (int b = 0; b < Bits; ++b) w[m][k][b] = next[m][k][b];
        scale[m][k] = next_scale[m][k], sign[m][k] = next_sign[m][k];
      }
    in = next_in;
    if (st + 1 < last) load(st + 1), load_stretch<D, Group>(p, r, t0 + kStretch, next_in);
    prepare_stretch<Bits, D, Group>(in, weight_sum, kStretch / G, s.mode == GroupMode::hybrid, sign_mask, buf, sh);
    __syncthreads();
    // Zero points first, so their loads are in flight during the multiplies.
    float zero[kTiles][2];
    const long long zero0 = s.mode == GroupMode::hybrid
                                ? p.values.zero_offset[r] + p.values.zero_base[static_cast<long long>(r) * s.zero_block_stride() + blk]
                                : 0;
#pragma unroll
    for (int m = 0; m < kTiles; ++m)
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int ch = 16 * (warp + 4 * m) + g + 8 * k;
        zero[m][k] = -offset * scale[m][k];
        if (s.mode == GroupMode::asym) zero[m][k] = zero_value(p.values.zeros, groups0 + static_cast<long long>(blk) * D + ch, s.meta_fp16);
        if (s.mode == GroupMode::hybrid && sign[m][k]) {
          // Compact index: the block's base + asymmetric channels before ch in the block.
          const unsigned* mask = sh.asym[buf][(32 * t) / G];
          int before = __popc(mask[ch / 32] & ((1u << (ch % 32)) - 1u));
#pragma unroll
          for (int x = 0; x < D / 32; ++x)
            if (x < ch / 32) before += __popc(mask[x]);
          zero[m][k] = zero_value(p.values.zeros, zero0 + before, s.meta_fp16);
        }
      }
#pragma unroll
    for (int m = 0; m < kTiles; ++m) {
      float c[Group][4] = {};
#pragma unroll
      for (int j = 0; j < Sh::kSteps; ++j) {
        const std::uint32_t a[4] = {pairs::decode<Bits, false>(w[m][0], 2 * j, ones), pairs::decode<Bits, false>(w[m][1], 2 * j, ones),
                                    pairs::decode<Bits, false>(w[m][0], 2 * j + 1, ones), pairs::decode<Bits, false>(w[m][1], 2 * j + 1, ones)};
#pragma unroll
        for (int h = 0; h < Group; ++h) {
          const uint2 b = sh.b[buf][h][j][slot];
          mma::mma(c[h], a, b.x, b.y);
        }
      }
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        // Lane t's tile: (|s| (dot - constant) + zero * sum p), in the tile's range scale.
#pragma unroll
        for (int h = 0; h < Group; ++h) {
          const float sum = sh.tile_sum[buf][h][t];
          acc[h][m][k] += (scale[m][k] * (c[h][2 * k] + c[h][2 * k + 1] - sh.tile_constant[buf][h][t]) + zero[m][k] * sum) * sh.inv_range[buf][h][t];
        }
      }
    }
  }
#pragma unroll
  for (int h = 0; h < Group; ++h)
#pragma unroll
    for (int m = 0; m < kTiles; ++m)
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        float v = acc[h][m][k];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (t == ((h * 2 * kTiles + 2 * m + k) & 3))
          p.partial[((static_cast<long long>(split) * gridDim.y + r) * Group + h) * D + 16 * (warp + 4 * m) + g + 8 * k] = v;
      }
}

// One query head: each warp streams its own stretches (gpu/value_tiles.cuh: B per warp, every m-tile
// of the values per warp), with no barrier per stretch. The warp copies its next stretch into the
// other of its two shared-memory stages (cp.async) while it works on the current one, and loads a
// stretch's probabilities a stretch ahead. The block's warps add up at the end.
template <int Bits, int D, class Meta>
__global__ void __launch_bounds__(kThreads, 4) outputs_warp_kernel(OutputsParams p, int stretches_per_split, std::uint32_t /*ones: the int8 values need none*/) {
  using Values = value_tiles::ValueTiles<Bits, D, Meta>;
  using Stage = typename Values::Stage;
  constexpr int kWarps = kThreads / 32, kMTiles = Values::kMTiles;
  // m-tile loads in flight ahead of the product: two where the registers allow (3- and 8-bit
  // codes' larger loads would spill at head_dim 128).
  constexpr int kAhead = Bits == 3 || Bits == 8 ? 1 : 2;
  extern __shared__ __align__(16) unsigned char dynamic_smem[];  // [kWarps][Values::kStages] stages
  __shared__ typename Values::ProbScratch probs[kWarps];
  __shared__ float sums[kWarps][D];
  const int tokens = p.values.shape.tokens, r = blockIdx.y, split = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  Stage* stages = reinterpret_cast<Stage*>(dynamic_smem) + Values::kStages * warp;
  const int stretches = (tokens + kStretch - 1) / kStretch;
  const int first = split * stretches_per_split, last = min(stretches, first + stretches_per_split);
  const float* prob = p.probs + static_cast<long long>(r) * tokens;
  const float* sigma = p.token_scale ? p.token_scale + static_cast<long long>(r) * tokens : nullptr;
  Values values;
  values.init(p.values, r);
  // A stretch's probabilities and token scales, loaded a stretch ahead and multiplied only when the
  // stretch starts: a product right after the loads would wait for them there. Past the end: a token
  // that exists, weighted 0.
  auto load_probs = [&](int st, float (&pr)[4], float (&sg)[4]) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int tok = min(st * kStretch + 32 * u + lane, tokens - 1);
      pr[u] = __ldg(prob + tok);
      sg[u] = sigma ? __ldg(sigma + tok) : 1.0f;
    }
  };
  float acc[kMTiles][2] = {};
  float next_p[4], next_sigma[4];
  int next_zero = 0;
  int st = first + warp;
  if (st < last) load_probs(st, next_p, next_sigma), next_zero = values.zero_start(st), values.copy_stretch(st, stages[0]);
  for (int i = 0; st < last; st += kWarps, ++i) {
    float pc[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) pc[u] = st * kStretch + 32 * u + lane < tokens ? next_p[u] * next_sigma[u] : 0.0f;
    const int zero_first = next_zero, next = st + kWarps;
    if (next < last) load_probs(next, next_p, next_sigma), next_zero = values.zero_start(next);
    values.copy_next(i, next, last, stages);
    const float inv_range = values.stage_probs(pc, lane, zero_first, probs[warp]);
    const Stage& cur = values.landed(i, stages);
    // Every m-tile, kAhead loads ahead (the hybrid zero points' global loads with them).
    typename Values::Loads l[kAhead + 1];
#pragma unroll
    for (int m = 0; m < kAhead; ++m) values.load(cur, st, m, l[m]);
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
      if (m + kAhead < kMTiles) values.load(cur, st, m + kAhead, l[(m + kAhead) % (kAhead + 1)]);
      float out[2];
      values.product(l[m % (kAhead + 1)], out);
#pragma unroll
      for (int k = 0; k < 2; ++k) acc[m][k] += out[k] * inv_range;
    }
  }
  values.store_sums(acc, sums[warp]);
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += kThreads) {
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += sums[w][c];
    p.partial[(static_cast<long long>(split) * gridDim.y + r) * D + c] = v;
  }
}

// A split-sequence launch of either kernel over stretches, then the splits added in order.
template <class Kernel>
cudaError_t launch_splits(Kernel kernel, int heads, int head_dim, const OutputsParams& p, cudaStream_t stream, std::size_t smem = 0) {
  const RegionShape& s = p.values.shape;
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kThreads, smem, info));
  const SplitRuns runs = split_runs((s.tokens + kStretch - 1) / kStretch, p.splits, info, p.values.regions);
  kernel<<<dim3(static_cast<unsigned>(runs.splits), static_cast<unsigned>(p.values.regions)), kThreads, smem, stream>>>(p, runs.per_split, pairs::kOnes);
  KVQ_CUDA_TRY(cudaGetLastError());
  return add_splits(p.partial, runs.splits, static_cast<long long>(p.values.regions) * heads * head_dim, p.outputs, stream);
}

// The warps' stages in dynamic shared memory.
template <int Bits, int D, class Meta>
cudaError_t launch_warps(const OutputsParams& p, cudaStream_t stream) {
  using Values = value_tiles::ValueTiles<Bits, D, Meta>;
  constexpr std::size_t kSmem = (kThreads / 32) * Values::kStages * sizeof(typename Values::Stage);
  return launch_splits(outputs_warp_kernel<Bits, D, Meta>, 1, D, p, stream, kSmem);
}

}  // namespace

bool outputs_mma_supported(const DeviceRegions& values, int group) {
  const RegionShape& s = values.shape;
  // A lane's chunk (32 tokens) must lie in one group.
  const bool groups = s.group_size == 32 || s.group_size == 64 || s.group_size == 128;
  return bits_built(s.bits) && head_dim_built(s.head_dim) && groups && !s.channel_axis && s.tokens % s.group_size == 0 && heads_built(group) &&
         (group > 1 || aligned16(values));
}

cudaError_t outputs_mma(const OutputsParams& p, cudaStream_t stream) {
  const RegionShape& s = p.values.shape;
  if (!outputs_mma_supported(p.values, p.group) || p.splits < 1) return cudaErrorInvalidValue;
  if (p.group == 1) {
    KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, {
      if (s.meta_fp16) return launch_warps<B, D, std::uint16_t>(p, stream);
      return launch_warps<B, D, std::uint32_t>(p, stream);
    }))
  }
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, KVQ_DISPATCH_GROUP(p.group, H, return launch_splits(outputs_mma_kernel<B, D, H>, H, D, p, stream);)))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
