// q . K^T over channel-axis keys for GQA groups on int8 tensor cores (gpu/byte_planes.cuh), the
// keys' counterpart of gpu/head_tiles.cuh: the four lanes of a quad share each 32-channel chunk (lane t
// takes the k-slots of step t), so one m16n8k32 covers a chunk of 16 tokens for four heads, B's column
// 2h + part carrying head h's hi or lo byte of q as 16-bit fixed point relative to the head's largest
// |q| in the chunk. Lane t's accumulator pair is then head t's exact dot product over the chunk for its
// two tokens, and the chunk's group scale multiplies it in registers. B is the same for the whole
// region: each warp builds it once and keeps it in registers. Each warp streams its own 64-token
// stretches, copied into shared memory a stretch ahead (cp.async); a hybrid stretch's compact zero
// points are put at their groups there first, so that the products read them as asym's. Symmetric
// keys (InnerQ's) take their own instantiation: the zero point is an integer offset in codes, so it
// comes off the integer dot product (offset times q's integer sum), with no zero points to load or
// convert and no mode to test per group.
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/packed.h"
#include "gpu/byte_planes.cuh"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/launch.h"
#include "gpu/meta.cuh"
#include "gpu/pipeline.cuh"
#include "gpu/region_arrays.cuh"
#include "gpu/scores_heads.h"

namespace kvq::gpu {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kStretch = 64;  // tokens per warp stretch: four m-tiles of 16, two hybrid zero-blocks of 32

template <int Bits, int D, class Meta, int Quads, bool Sym>
struct KeyHeads {
  static constexpr int kHeads = 4 * Quads, kChunks = D / 32, kWords = planes::kLaneWords<Bits>;
  static constexpr int kRowBytes = D * Bits / 8;  // one token's codes
  // A stretch's codes, scales and zero points ([token][group], at most D / 32 groups per token), each
  // copied from its 16-byte piece on (copy_async): a region's arrays may start anywhere, so each has
  // 16 bytes of headroom and starts `skip` in (the same for every stretch of a region).
  struct alignas(16) Stage {
    static constexpr int kMetaRoom = 16 / static_cast<int>(sizeof(Meta));
    std::uint8_t codes[kStretch * kRowBytes + 16];
    Meta scales[kStretch * kChunks + kMetaRoom];
    Meta zeros[kStretch * kChunks + kMetaRoom];
  };
  static constexpr int kStages = 2;  // the stretch being worked on and the next one in flight
  // q's bytes while B is built: [chunk][head][part][slot] (in the stages, before the first copy).
  struct QueryScratch {
    std::uint8_t bytes[kChunks][kHeads][2][planes::kBytes];
  };
  static_assert(sizeof(QueryScratch) <= kStages * sizeof(Stage), "q's scratch fits in the warp's stages");
  // m-tile loads for the lane: its words of tokens g and g + 8 (row k) for each chunk, and the
  // chunk's group scale and zero point for each.
  struct Loads {
    std::uint32_t w[2][kChunks][kWords];
    Meta scale[2][kChunks];
    Meta zero[2][kChunks];
  };

  const std::uint32_t* codes;
  const Meta* scales;
  const Meta* zeros;
  const std::uint32_t* zero_base;
  GroupMode mode;
  int tokens, groups, chunk_shift, g, t;  // groups per token; chunk_shift: log2(chunks per group)
  int code_skip, scale_skip, zero_skip;   // where a stretch starts in the stage's arrays (bytes; entries)
  bool on16;                              // codes and scales start on 16 bytes
  float offset;
  // Lane (g, t)'s B (head 4q + g / 2's part g % 2 of each chunk), and for head 4q + t and
  // each chunk: what turns a product back into q's scale, and the chunk's sum of q in that scale
  // (Sym: that sum times the code offset, in integers).
  std::uint32_t b[kChunks][Quads][2];
  float inv_range[Quads][kChunks];
  float q_sum[Quads][kChunks];
  int q_offset[Quads][kChunks];

  __device__ __forceinline__ void init(const DeviceRegions& keys, int r) {
    const RegionShape& s = keys.shape;
    const int lane = threadIdx.x & 31;
    g = lane >> 2, t = lane & 3;
    mode = s.mode, tokens = s.tokens, groups = D / s.group_size, chunk_shift = s.group_size == 32 ? 0 : s.group_size == 64 ? 1 : 2;
    offset = static_cast<float>(packed::sym_offset(Bits, s.twos));
    const RegionArrays<Meta> a = region_arrays<Meta>(keys, r);
    codes = a.codes, scales = a.scales, zeros = a.zeros, zero_base = a.zero_base;
    // A stretch starts a multiple of 16 bytes into the region's arrays (64 tokens' worth).
    const auto skip = [](const void* ptr) { return static_cast<int>(reinterpret_cast<std::uintptr_t>(ptr) & 15u); };
    code_skip = skip(codes), scale_skip = skip(scales) / static_cast<int>(sizeof(Meta));
    zero_skip = mode == GroupMode::asym ? skip(zeros) / static_cast<int>(sizeof(Meta)) : 0;  // hybrid: expand_zeros puts them at 0
    on16 = code_skip == 0 && scale_skip == 0;  // symmetric keys copy no zero points
  }

  // q ([group][D], heads past the group weigh 0) into B through the warp's scratch.
  __device__ __forceinline__ void set_query(const float* q, int group, QueryScratch& scratch) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int c = 0; c < kChunks; ++c)
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        if (h >= group) break;
        const float v = __ldg(q + h * D + 32 * c + lane);
        float qmax = fabsf(v);
        for (int off = 16; off > 0; off >>= 1) qmax = fmaxf(qmax, __shfl_xor_sync(0xffffffffu, qmax, off));
        float inv;
        const float range = planes::fixed_range(qmax, inv);
        if (h % 4 == t) inv_range[h / 4][c] = inv;
        planes::put_fixed<Bits>(v, range, lane, scratch.bytes[c][h]);
      }
    __syncwarp();
#pragma unroll
    for (int q = 0; q < Quads; ++q)
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const int h = 4 * q + (g >> 1);
        const int sum = planes::shared_b<Bits>(scratch.bytes[c][h], h < group, g, t, b[c][q]);
        q_sum[q][c] = static_cast<float>(sum);
        q_offset[q][c] = static_cast<int>(offset) * sum;
        if (!(4 * q + t < group)) inv_range[q][c] = 0.0f;  // heads past the group: never stored, kept finite
      }
    __syncwarp();  // the scratch is the stages': read before the first copy
  }

  __device__ __forceinline__ int live_in(int st) const { return min(kStretch, tokens - st * kStretch); }

  // Starts the copy of stretch st into `stage` and commits it as one cp.async group of this lane. For
  // symmetric keys, a whole stretch of arrays on 16 bytes is fixed 16-byte pieces (no alignment or tail
  // to work out per stretch); the rest take copy_async, which copies from anywhere, any length. (The
  // general instantiations keep copy_async alone: the second path spilled up to 108 bytes there.)
  __device__ __forceinline__ void copy_stretch(int st, Stage& stage) const {
    const int lane = threadIdx.x & 31, live = live_in(st);
    const long long tok0 = static_cast<long long>(st) * kStretch;
    const std::uint8_t* code_src = reinterpret_cast<const std::uint8_t*>(codes) + tok0 * kRowBytes;
    if (Sym && live == kStretch && on16) {
      constexpr int kCodePieces = kStretch * kRowBytes / 16;  // 8 D Bits / 16: a multiple of 32
      static_assert(kCodePieces % 32 == 0, "a stretch's codes are whole 16-byte pieces for every lane");
      const unsigned code_dst = static_cast<unsigned>(__cvta_generic_to_shared(stage.codes));
#pragma unroll
      for (int j = 0; j < kCodePieces / 32; ++j) copy16(code_dst + 16 * (lane + 32 * j), code_src + 16 * (lane + 32 * j));
      const int meta_pieces = kStretch * groups * static_cast<int>(sizeof(Meta)) / 16;
      const char* scale_src = reinterpret_cast<const char*>(scales + tok0 * groups);
      const unsigned scale_dst = static_cast<unsigned>(__cvta_generic_to_shared(stage.scales));
      for (int i = lane; i < meta_pieces; i += 32) copy16(scale_dst + 16 * i, scale_src + 16 * i);
    } else {
      copy_async(stage.codes, code_src, static_cast<long long>(live) * kRowBytes, lane, 32);
      const long long meta = static_cast<long long>(live) * groups * static_cast<long long>(sizeof(Meta));
      copy_async(stage.scales, scales + tok0 * groups, meta, lane, 32);
      if (mode == GroupMode::asym) copy_async(stage.zeros, zeros + tok0 * groups, meta, lane, 32);
    }
    copy_commit();
  }

  // Where the two zero-blocks of stretch st start in the region's compact zero points (hybrid; lanes
  // 0 and 1), loaded a stretch ahead.
  __device__ __forceinline__ int zero_start(int st) const {
    const int lane = threadIdx.x & 31, blocks = (tokens + 31) / 32;
    return mode == GroupMode::hybrid && lane < 2 ? static_cast<int>(__ldg(zero_base + min(2 * st + lane, blocks - 1))) : 0;
  }

  // Hybrid: the landed stretch's compact zero points (token-major, then group, per 32-token block)
  // put at their groups in the stage. All the loads go out before the first store.
  __device__ __forceinline__ void expand_zeros(Stage& stage, int st, int zero_first) const {
    if (mode != GroupMode::hybrid) return;
    const int live = live_in(st);
    BlockZeros<kChunks, Meta> z[2];  // a block's entries: its live tokens' groups, at most 32 x D / 32
#pragma unroll
    for (int j = 0; j < 2; ++j)
      z[j].load(stage.scales + scale_skip + 32 * j * groups, zeros, __shfl_sync(0xffffffffu, zero_first, j), max(0, min(32, live - 32 * j)) * groups);
#pragma unroll
    for (int j = 0; j < 2; ++j) z[j].store(stage.zeros + 32 * j * groups);
    __syncwarp();
  }

  // m-tile m's loads (tokens 16m + g and 16m + g + 8 of the stretch) from the landed stage.
  __device__ __forceinline__ void load(const Stage& stage, int m, Loads& into) const {
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int tok = 16 * m + g + 8 * k;
      const std::uint8_t* row = stage.codes + code_skip + tok * kRowBytes;  // on 16 bytes (8 for 24-byte rows)
      if constexpr (Bits == 2 || Bits == 3) {
        std::uint32_t words[kChunks * Bits];
        if constexpr (kRowBytes % 16 == 0) {
#pragma unroll
          for (int i = 0; i < kRowBytes / 16; ++i) {
            const uint4 v = reinterpret_cast<const uint4*>(row)[i];
            words[4 * i] = v.x, words[4 * i + 1] = v.y, words[4 * i + 2] = v.z, words[4 * i + 3] = v.w;
          }
        } else {
#pragma unroll
          for (int i = 0; i < kRowBytes / 8; ++i) {
            const uint2 v = reinterpret_cast<const uint2*>(row)[i];
            words[2 * i] = v.x, words[2 * i + 1] = v.y;
          }
        }
#pragma unroll
        for (int c = 0; c < kChunks; ++c)
#pragma unroll
          for (int j = 0; j < Bits; ++j) into.w[k][c][j] = words[c * Bits + j];
      } else {
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          const uint2 v = *reinterpret_cast<const uint2*>(row + c * Bits * 4 + 4 * planes::lane_word0<Bits>(t));
          into.w[k][c][0] = v.x, into.w[k][c][1] = v.y;
        }
      }
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const int at = tok * groups + (c >> chunk_shift);
        into.scale[k][c] = stage.scales[scale_skip + at];
        if constexpr (!Sym) into.zero[k][c] = mode != GroupMode::sym ? stage.zeros[zero_skip + at] : Meta(0);
      }
    }
  }

  // The scores of tokens 16m + g + 8k for head 4q + t: score[q][k].
  __device__ __forceinline__ void product(const Loads& cur, float (&score)[Quads][2]) const {
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int q = 0; q < Quads; ++q) score[q][k] = 0.0f;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      std::uint32_t a[4];
      planes::a_regs_at<Bits>(cur.w[0][c], cur.w[1][c], t, a);
      float scale[2], zero[2];
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        if constexpr (Sym) scale[k] = magnitude(cur.scale[k][c]);
        else scale_and_zero(cur.scale[k][c], cur.zero[k][c], mode, offset, scale[k], zero[k]);
      }
#pragma unroll
      for (int q = 0; q < Quads; ++q)
        planes::add_chunk_terms<Bits, Sym>(a, b[c][q], scale, zero, q_sum[q][c], q_offset[q][c], inv_range[q][c], score[q]);
    }
  }
};

template <int Bits, int D, class Meta, int Quads, bool Sym>
constexpr std::size_t stages_bytes() {
  return kWarps * KeyHeads<Bits, D, Meta, Quads, Sym>::kStages * sizeof(typename KeyHeads<Bits, D, Meta, Quads, Sym>::Stage);
}

template <int Bits, int D, class Meta, int Quads, bool Sym>
__global__ void __launch_bounds__(kThreads, Quads == 1 ? 4 : 3) scores_heads_kernel(ScoresParams p, int stretches_per_split) {
  wait_for_prior_kernels();
  using Keys = KeyHeads<Bits, D, Meta, Quads, Sym>;
  using Stage = typename Keys::Stage;
  constexpr int kHeads = Keys::kHeads;
  extern __shared__ __align__(16) unsigned char dynamic_smem[];  // [kWarps][Keys::kStages] stages
  const int r = blockIdx.y, split = blockIdx.x, warp = threadIdx.x >> 5, group = p.group;
  Stage* stages = reinterpret_cast<Stage*>(dynamic_smem) + Keys::kStages * warp;
  Keys keys;
  keys.init(p.keys, r);
  const int tokens = keys.tokens, stretches = (tokens + kStretch - 1) / kStretch;
  const int first = split * stretches_per_split, last = min(stretches, first + stretches_per_split);
  int st = first + warp;
  if (st >= last) return;
  keys.set_query(p.queries + static_cast<long long>(r) * group * D, group, *reinterpret_cast<typename Keys::QueryScratch*>(stages));
  keys.copy_stretch(st, stages[0]);
  int next_zero = keys.zero_start(st);
  float* out = p.scores + static_cast<long long>(r) * group * tokens;
  const float* sigma = p.token_scale ? p.token_scale + static_cast<long long>(r) * tokens : nullptr;
  for (unsigned i = 0; st < last; st += kWarps, ++i) {
    const int next = st + kWarps, zero_first = next_zero;
    if (next < last) next_zero = keys.zero_start(next);
    ring_refill<Keys::kStages>(i, next < last, stages, [&](Stage& stage) { keys.copy_stretch(next, stage); });
    Stage& cur = ring_landed<Keys::kStages>(i, stages);
    keys.expand_zeros(cur, st, zero_first);
    const int live = keys.live_in(st);
    typename Keys::Loads l[2];
    keys.load(cur, 0, l[0]);
#pragma unroll
    for (int m = 0; m < kStretch / 16; ++m) {
      if (16 * m >= live) break;
      if (m + 1 < kStretch / 16) keys.load(cur, m + 1, l[(m + 1) % 2]);
      float score[Quads][2];
      keys.product(l[m % 2], score);
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int tok = st * kStretch + 16 * m + keys.g + 8 * k;
        if (tok >= tokens) continue;
        const float sg = sigma ? __ldg(sigma + tok) : 1.0f;
#pragma unroll
        for (int q = 0; q < Quads; ++q) {
          const int h = 4 * q + keys.t;
          if (h < group && h < kHeads) out[static_cast<long long>(h) * tokens + tok] = score[q][k] * sg;
        }
      }
    }
  }
}

template <int Bits, int D, class Meta, int Quads, bool Sym>
cudaError_t launch_mode(const ScoresParams& p, cudaStream_t stream) {
  auto kernel = scores_heads_kernel<Bits, D, Meta, Quads, Sym>;
  constexpr std::size_t kSmem = stages_bytes<Bits, D, Meta, Quads, Sym>();
  LaunchInfo info;
  KVQ_CUDA_TRY(launch_info(reinterpret_cast<const void*>(kernel), kThreads, kSmem, info));
  // Runs of whole stretches, at most one wave of resident blocks, each block's warps taking its run's
  // stretches in turn.
  const int stretches = (p.keys.shape.tokens + kStretch - 1) / kStretch;
  const SplitRuns runs = split_runs((stretches + kWarps - 1) / kWarps, info.wave_per_region(p.keys.regions), info, p.keys.regions);
  const int per_split = runs.per_split * kWarps;
  const int splits = (stretches + per_split - 1) / per_split;
  return launch_kernel(kernel, dim3(static_cast<unsigned>(splits), static_cast<unsigned>(p.keys.regions)), dim3(kThreads), kSmem, stream, p, per_split);
}

template <int Bits, int D, class Meta, int Quads>
cudaError_t launch(const ScoresParams& p, cudaStream_t stream) {
  return p.keys.shape.mode == GroupMode::sym ? launch_mode<Bits, D, Meta, Quads, true>(p, stream) : launch_mode<Bits, D, Meta, Quads, false>(p, stream);
}

}  // namespace

bool scores_heads_supported(const DeviceRegions& keys, int group) {
  const RegionShape& s = keys.shape;
  // A chunk (32 channels) must lie in one group.
  const bool groups = (s.group_size == 32 || s.group_size == 64 || s.group_size == 128) && s.head_dim % s.group_size == 0;
  // A token's codes are read 16 bytes at a time (8 for 24-byte rows), so the codes must start on 16
  // bytes; the regions' strides are whole rows. Metadata may start anywhere (2-byte entries).
  const bool codes = reinterpret_cast<std::uintptr_t>(keys.codes) % 16 == 0;
  return s.channel_axis && bits_built(s.bits) && head_dim_built(s.head_dim) && groups && group > 1 && heads_built(group) && codes;
}

cudaError_t scores_heads(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  if (!scores_heads_supported(p.keys, p.group)) return cudaErrorInvalidValue;
  if (s.tokens == 0) return cudaSuccess;
  KVQ_DISPATCH_HEAD_DIM(s.head_dim, D, KVQ_DISPATCH_BITS(s.bits, B, {
    if (s.meta_fp16) return p.group <= 4 ? launch<B, D, std::uint16_t, 1>(p, stream) : launch<B, D, std::uint16_t, 2>(p, stream);
    return p.group <= 4 ? launch<B, D, std::uint32_t, 1>(p, stream) : launch<B, D, std::uint32_t, 2>(p, stream);
  }))
  return cudaErrorInvalidValue;
}

}  // namespace kvq::gpu
