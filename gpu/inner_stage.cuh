#pragma once
// One stage of an inner-layout decode kernel: 128 tokens of one region, copied to shared memory with
// cp.async while earlier stages are computed on (gpu/pipeline.cuh), then multiplied on the tensor
// cores (gpu/mma.cuh). Used by scores_inner, outputs_inner and the fused attention alike.
//
// A block is 4 warps. Keys (channel-axis groups): warp w owns tokens 32w..32w+31 of the stage, two
// 16-row mma tiles, and reduces over channels against q's B fragments (fixed for the block). Values
// (token-axis groups): warp w owns channels 32w..32w+31 (head_dim 128; 16w..16w+15 for 64) and
// reduces over the stage's tokens against p's B fragments (built per stage). Each group closes with
// result += |s| * (hi + lo) / vector_scale + z_eff * (sum of the vector over the group), where z_eff
// (zero point or -offset * s) and |s| were unpacked one stage ahead into shared memory; hybrid zero
// points, whose place depends on the mode bits before them, are fetched from global memory then.
#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

#include "core/packed.h"
#include "gpu/dispatch.cuh"
#include "gpu/gemv.h"
#include "gpu/meta.cuh"
#include "gpu/mma.cuh"
#include "gpu/pipeline.cuh"
#include "gpu/reduce.cuh"

namespace kvq::gpu::stage {

inline constexpr int kTokens = 128;   // tokens per stage
inline constexpr int kThreads = 128;  // 4 warps
inline constexpr int kBuffers = 4;    // stage buffers: computing s, s+1 landed, s+2 and s+3 in flight

// Shapes the stages handle: bits 2/3/4/8, head_dim 64/128, GQA group up to 8, groups of 32, 64 or 128
// (16 too, except for 3 bits, whose k-steps mix a chunk's halves); channel-axis keys and
// token-axis values (whose token count is a whole number of groups).
inline bool supported(const RegionShape& s, int group) {
  const bool groups = s.group_size == 32 || s.group_size == 64 || s.group_size == 128 || (s.group_size == 16 && s.bits != 3);
  const bool axis = s.channel_axis ? s.head_dim % s.group_size == 0 : s.tokens % s.group_size == 0;
  return bits_built(s.bits) && head_dim_built(s.head_dim) && groups && axis && heads_built(group);
}

// Byte offsets of one stage buffer's arrays in shared memory (each with 16 bytes of headroom for the
// alignment of cp.async), from the shape alone; `bytes` is one buffer.
struct Layout {
  int codes = 0, scales = 0, zeros = 0, zero_base = 0, token_scale = 0, probs = 0, probs_stride = 0, bytes = 0;
};

__host__ __device__ inline int padded(long long bytes) { return static_cast<int>((bytes + 16 + 15) / 16 * 16); }

// A kernel's dynamic shared memory: its fixed part (Smem, rounded up to 16 bytes), then kBuffers
// stage buffers of `buffer_bytes` each; buffers() is where the first starts.
template <typename Smem>
inline constexpr std::size_t kFixedBytes = (sizeof(Smem) + 15) / 16 * 16;
template <typename Smem>
inline std::size_t smem_bytes(int buffer_bytes) { return kFixedBytes<Smem> + static_cast<std::size_t>(kBuffers) * buffer_bytes; }
template <typename Smem>
__device__ __forceinline__ char* buffers(char* smem) { return smem + kFixedBytes<Smem>; }

// Layout for a key stage (channel_axis) or a value stage; probs_heads > 0 adds the probabilities of
// that many heads (the standalone outputs kernel; the fused attention makes them itself).
inline Layout layout(const RegionShape& s, bool token_scale, int probs_heads) {
  const int mb = s.meta_fp16 ? 2 : 4;
  const long long groups = s.channel_axis ? static_cast<long long>(kTokens) * (s.head_dim / s.group_size)
                                          : static_cast<long long>(kTokens / s.group_size) * s.head_dim;
  const long long code_bytes = static_cast<long long>(kTokens) * s.head_dim * s.bits / 8;
  Layout l;
  int at = 0;
  l.codes = at, at += padded(code_bytes);
  l.scales = at, at += padded(groups * mb);
  l.zeros = at, at += s.mode == GroupMode::asym ? padded(groups * mb) : 0;
  l.zero_base = at, at += s.mode == GroupMode::hybrid ? padded(4 * (kTokens / s.zero_block_tokens() + 1)) : 0;
  l.token_scale = at, at += token_scale ? padded(4 * kTokens) : 0;
  l.probs_stride = padded(4 * kTokens);
  l.probs = at, at += probs_heads * l.probs_stride;
  l.bytes = at;
  return l;
}

// Where src landed in a buffer: cp.async copies from src rounded down to 16 bytes.
template <typename T>
__device__ __forceinline__ const T* landed(const char* buffer, int offset, const void* src) {
  return reinterpret_cast<const T*>(buffer + offset + (reinterpret_cast<std::uintptr_t>(src) & 15u));
}

// ---------------------------------------------------------------------------------------------
// Keys: channel-axis groups; a stage is tokens [t0, t0 + 128) of region r.

struct KeySources {
  const std::uint32_t* codes;
  const void *scales, *zeros;
  const std::uint32_t* zero_base;
  const float* token_scale;
  int n;  // live tokens in the stage
};

__device__ __forceinline__ KeySources key_sources(const DeviceRegions& k, const float* token_scale, int r, int t0) {
  const RegionShape& s = k.shape;
  const int mb = s.meta_fp16 ? 2 : 4, gpr = s.head_dim / s.group_size, rw = s.head_dim / 32 * s.bits;
  const long long group0 = static_cast<long long>(r) * s.group_stride() + static_cast<long long>(t0) * gpr;
  KeySources src;
  src.n = min(kTokens, s.tokens - t0);
  src.codes = k.codes + static_cast<long long>(r) * s.code_stride() + static_cast<long long>(t0) * rw;
  src.scales = static_cast<const char*>(k.scales) + group0 * mb;
  src.zeros = s.mode == GroupMode::asym ? static_cast<const char*>(k.zeros) + group0 * mb : nullptr;
  src.zero_base = s.mode == GroupMode::hybrid ? k.zero_base + static_cast<long long>(r) * s.zero_block_stride() + t0 / 32 : nullptr;
  src.token_scale = token_scale ? token_scale + static_cast<long long>(r) * s.tokens + t0 : nullptr;
  return src;
}

__device__ __forceinline__ void key_issue(char* buffer, const Layout& l, const DeviceRegions& k, const float* token_scale, int r, int t0) {
  const RegionShape& s = k.shape;
  if (t0 >= s.tokens) return;
  const KeySources src = key_sources(k, token_scale, r, t0);
  const int mb = s.meta_fp16 ? 2 : 4, gpr = s.head_dim / s.group_size, tid = threadIdx.x;
  copy_async(buffer + l.codes, src.codes, static_cast<long long>(src.n) * s.head_dim * s.bits / 8, tid, kThreads);
  copy_async(buffer + l.scales, src.scales, static_cast<long long>(src.n) * gpr * mb, tid, kThreads);
  if (src.zeros) copy_async(buffer + l.zeros, src.zeros, static_cast<long long>(src.n) * gpr * mb, tid, kThreads);
  if (src.zero_base) copy_async(buffer + l.zero_base, src.zero_base, 4 * ((src.n + 31) / 32), tid, kThreads);
  if (src.token_scale) copy_async(buffer + l.token_scale, src.token_scale, 4 * src.n, tid, kThreads);
}

// Per-group metadata of one token (thread tid <-> token tid of the stage), at most 8 groups per row.
struct Meta {
  float scale[8], zero[8];
};

// Reads the metadata of stage t0 (landed in `buffer`) for this thread's token; hybrid zero points come
// from global memory (their loads are in flight until key_meta_store uses them).
template <int D>
__device__ __forceinline__ void key_meta_load(const char* buffer, const Layout& l, const DeviceRegions& k, int r, int t0, Meta& m) {
  const RegionShape& s = k.shape;
  const int gpr = D / s.group_size, tok = threadIdx.x;
  const KeySources src = key_sources(k, nullptr, r, t0 < s.tokens ? t0 : 0);
  const bool live = t0 < s.tokens && tok < src.n;
  const char* scales = reinterpret_cast<const char*>(landed<char>(buffer, l.scales, src.scales));
  const int offset = packed::sym_offset(s.bits, s.twos);
  int asym_groups = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    m.scale[j] = m.zero[j] = 0.0f;
    if (j >= gpr || !live) continue;
    bool sign;
    m.scale[j] = meta_value(scales, tok * gpr + j, s.meta_fp16, sign);
    const bool asym = s.mode == GroupMode::asym || (s.mode == GroupMode::hybrid && sign);
    m.zero[j] = -static_cast<float>(offset) * m.scale[j];
    if (s.mode == GroupMode::asym) m.zero[j] = zero_value(landed<char>(buffer, l.zeros, src.zeros), tok * gpr + j, s.meta_fp16);
    asym_groups += asym;
  }
  if (s.mode != GroupMode::hybrid) return;
  // Compact zero points: the token's first is its 32-token block's base (the warp's tokens are one
  // block) plus the asymmetric groups of the tokens before it in the block.
  const int before = warp_exclusive_sum(asym_groups);
  if (!live) return;
  long long z = k.zero_offset[r] + landed<std::uint32_t>(buffer, l.zero_base, src.zero_base)[tok / 32] + before;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (j >= gpr) continue;
    bool sign;
    meta_value(scales, tok * gpr + j, s.meta_fp16, sign);
    if (sign) m.zero[j] = zero_value(k.zeros, z++, s.meta_fp16);
  }
}

// Unpacked metadata in shared memory: [token][group] scale and zero, for one stage.
template <int D>
struct KeyMetaSmem {
  float scale[kTokens][D / 16 + 1], zero[kTokens][D / 16 + 1];  // +1: no bank conflicts across rows
};

template <int D>
__device__ __forceinline__ void key_meta_store(const Meta& m, KeyMetaSmem<D>& out) {
#pragma unroll
  for (int j = 0; j < D / 16; ++j) out.scale[threadIdx.x][j] = m.scale[j], out.zero[threadIdx.x][j] = m.zero[j];
}

// q's side, prepared once per block: B fragments, the power-of-two scales and the group sums.
template <int Bits, int D, int Group>
struct QuerySmem {
  static constexpr int kFrags = D / 32 * mma::kSteps<Bits> * mma::kPasses<Group> * 2;
  std::uint32_t frag[kFrags][32];  // [chunk][step][pass][b0/b1][lane]
  float sum[D / 16][Group];        // sum of q over each group of channels
  float unscale[Group];            // 1 / the q scale of each head
};

// Writes the B fragments of `chunks` 32-step chunks of a vector v[head][position] (shared, positions
// chunk * 32 + 0..31) scaled per head by vscale, in the order [chunk][step][pass][b0/b1][lane] that
// chunk_mma reads. Ends with __syncthreads.
template <int Bits, int Group, int N>
__device__ void build_frags(const float (&v)[Group][N], const float (&vscale)[Group], int chunks, std::uint32_t (*frag)[32]) {
  constexpr int kSteps = mma::kSteps<Bits>, kPasses = mma::kPasses<Group>;
  for (int f = threadIdx.x; f < chunks * kSteps * kPasses * 64; f += kThreads) {
    const int ln = f % 32, j = f / 32 % 2, pass = f / 64 % kPasses, st = f / (64 * kPasses) % kSteps, ch = f / (64 * kPasses * kSteps);
    const int g = ln >> 2, t = ln & 3;
    int head, part;
    mma::column<Group>(g, pass, head, part);
    __half half[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float x = head < Group ? v[head][ch * 32 + mma::phys<Bits>(st, t, 2 * j + e)] * vscale[head] * mma::weight<Bits>(st, j) : 0.0f;
      half[e] = mma::split_part(x, part);
    }
    frag[f / 32][ln] = mma::pack_half2(half[0], half[1]);
  }
  __syncthreads();
}

// C[pass] += A * B for k-step st of one chunk: A from two rows' code words (rows g and g + 8 of the
// tile), B from the chunk's fragments (chunk_frag = &frag[chunk * kSteps * kPasses * 2]).
template <int Bits, int Group>
__device__ __forceinline__ void chunk_mma(const std::uint32_t (&row_g)[Bits], const std::uint32_t (&row_g8)[Bits], int st, int t,
                                          const std::uint32_t (*chunk_frag)[32], int lane, float (&c)[mma::kPasses<Group>][4]) {
  const std::uint32_t a[4] = {mma::decode_pair<Bits>(row_g, st, t, 0), mma::decode_pair<Bits>(row_g8, st, t, 0),
                              mma::decode_pair<Bits>(row_g, st, t, 1), mma::decode_pair<Bits>(row_g8, st, t, 1)};
#pragma unroll
  for (int pass = 0; pass < mma::kPasses<Group>; ++pass) {
    const int f = (st * mma::kPasses<Group> + pass) * 2;
    mma::mma(c[pass], a, chunk_frag[f][lane], chunk_frag[f + 1][lane]);
  }
}

// Builds QuerySmem from q [Group][D] (global, fp32; one block's kv head).
template <int Bits, int D, int Group>
__device__ void query_prepare(const float* q, int group_size, QuerySmem<Bits, D, Group>& out, float (&q_s)[Group][D], float (&qscale_s)[Group]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < Group * D; i += kThreads) q_s[i / D][i % D] = q[i];
  __syncthreads();
  for (int h = warp; h < Group; h += kThreads / 32) {
    float m = 0.0f;
    const int L = group_size < 32 ? group_size : 32;  // lanes per segment of a group within a chunk
#pragma unroll
    for (int j = 0; j < D / 32; ++j) {
      const float v = q_s[h][32 * j + lane];
      m = fmaxf(m, fabsf(v));
      float sum = v;
      for (int off = 1; off < L; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      if (lane % L == 0) {
        const int gi = (32 * j + lane) / group_size;
        out.sum[gi][h] = (32 * j) % group_size == 0 ? sum : out.sum[gi][h] + sum;
      }
    }
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (lane == 0) qscale_s[h] = mma::fp16_range_scale(m), out.unscale[h] = 1.0f / mma::fp16_range_scale(m);
  }
  __syncthreads();
  build_frags<Bits, Group>(q_s, qscale_s, D / 32, out.frag);
}

// Heads of the GQA group this lane's accumulator columns hold (mma::column): one (t) for groups of
// up to 4, two (2t, 2t+1) beyond.
template <int Group>
inline constexpr int kLaneHeads = Group <= 4 ? 1 : 2;
template <int Group>
__device__ __forceinline__ int lane_head(int t, int i) {
  return Group <= 4 ? t : 2 * t + i;
}
// The sum of hi and lo parts for lane head i from pass accumulators c[pass][4], row half k (0: row g, 1: g+8).
template <int Group>
__device__ __forceinline__ float combined(const float (&c)[mma::kPasses<Group>][4], int k, int i) {
  if constexpr (Group <= 4) {
    return c[0][2 * k] + c[0][2 * k + 1];
  } else {
    return c[0][2 * k + i] + c[1][2 * k + i];
  }
}

// Scores of the warp's 32 tokens of a landed key stage: score[tile][k][i] for token 32w + 16 tile + g + 8k
// and head lane_head(t, i) (not yet multiplied by token scales).
template <int Bits, int D, int Group>
__device__ __forceinline__ void key_compute(const std::uint32_t* codes, const KeyMetaSmem<D>& meta, const QuerySmem<Bits, D, Group>& qs,
                                            int group_size, float (&score)[2][2][kLaneHeads<Group>]) {
  constexpr int kSteps = mma::kSteps<Bits>, kPasses = mma::kPasses<Group>, RW = D / 32 * Bits;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  float c[2][kPasses][4] = {};
#pragma unroll
  for (int tile = 0; tile < 2; ++tile)
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int i = 0; i < kLaneHeads<Group>; ++i) score[tile][k][i] = 0.0f;
  int done = 0;
#pragma unroll
  for (int ch = 0; ch < D / 32; ++ch) {
    std::uint32_t w[2][2][Bits];  // [tile][row g / g+8][word]
#pragma unroll
    for (int tile = 0; tile < 2; ++tile)
#pragma unroll
      for (int k = 0; k < 2; ++k)
#pragma unroll
        for (int b = 0; b < Bits; ++b) w[tile][k][b] = codes[(32 * warp + 16 * tile + g + 8 * k) * RW + ch * Bits + b];
#pragma unroll
    for (int st = 0; st < kSteps; ++st) {
#pragma unroll
      for (int tile = 0; tile < 2; ++tile) chunk_mma<Bits, Group>(w[tile][0], w[tile][1], st, t, &qs.frag[ch * kSteps * kPasses * 2], lane, c[tile]);
      done += mma::closes<Bits>(st);
      if (mma::closes<Bits>(st) && done % group_size == 0) {
        const int gi = done / group_size - 1;
#pragma unroll
        for (int tile = 0; tile < 2; ++tile) {
#pragma unroll
          for (int k = 0; k < 2; ++k) {
            const int row = 32 * warp + 16 * tile + g + 8 * k;
            const float scale = meta.scale[row][gi], zero = meta.zero[row][gi] - mma::kPlaneConstant<Bits> * scale;
#pragma unroll
            for (int i = 0; i < kLaneHeads<Group>; ++i) {
              const int h = lane_head<Group>(t, i);
              if (h < Group) score[tile][k][i] += scale * (combined<Group>(c[tile], k, i) * qs.unscale[h]) + zero * qs.sum[gi][h];
            }
          }
#pragma unroll
          for (int pass = 0; pass < kPasses; ++pass)
#pragma unroll
            for (int e = 0; e < 4; ++e) c[tile][pass][e] = 0.0f;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Values: token-axis groups; a stage is tokens [t0, t0 + 128) of region r, t0 a multiple of 128.

struct ValueSources {
  const std::uint32_t* codes;
  const void *scales, *zeros;
  const std::uint32_t* zero_base;
  const float* token_scale;
  int n;  // live tokens in the stage (a multiple of the group size)
};

__device__ __forceinline__ ValueSources value_sources(const DeviceRegions& v, const float* token_scale, int r, int t0) {
  const RegionShape& s = v.shape;
  const int mb = s.meta_fp16 ? 2 : 4, D = s.head_dim, G = s.group_size;
  const long long group0 = static_cast<long long>(r) * s.group_stride() + static_cast<long long>(t0 / G) * D;
  ValueSources src;
  src.n = min(kTokens, s.tokens - t0);
  src.codes = v.codes + static_cast<long long>(r) * s.code_stride() + static_cast<long long>(t0 / 32) * D * s.bits;
  src.scales = static_cast<const char*>(v.scales) + group0 * mb;
  src.zeros = s.mode == GroupMode::asym ? static_cast<const char*>(v.zeros) + group0 * mb : nullptr;
  src.zero_base = s.mode == GroupMode::hybrid ? v.zero_base + static_cast<long long>(r) * s.zero_block_stride() + t0 / G : nullptr;
  src.token_scale = token_scale ? token_scale + static_cast<long long>(r) * s.tokens + t0 : nullptr;
  return src;
}

// Copies a value stage; probs (null in the fused attention): [regions][Group][tokens] fp32.
template <int Group>
__device__ __forceinline__ void value_issue(char* buffer, const Layout& l, const DeviceRegions& v, const float* token_scale,
                                            const float* probs, int r, int t0) {
  const RegionShape& s = v.shape;
  if (t0 >= s.tokens) return;
  const ValueSources src = value_sources(v, token_scale, r, t0);
  const int mb = s.meta_fp16 ? 2 : 4, D = s.head_dim, G = s.group_size, tid = threadIdx.x;
  copy_async(buffer + l.codes, src.codes, static_cast<long long>((src.n + 31) / 32) * D * s.bits * 4, tid, kThreads);
  copy_async(buffer + l.scales, src.scales, static_cast<long long>(src.n / G) * D * mb, tid, kThreads);
  if (src.zeros) copy_async(buffer + l.zeros, src.zeros, static_cast<long long>(src.n / G) * D * mb, tid, kThreads);
  if (src.zero_base) copy_async(buffer + l.zero_base, src.zero_base, 4 * (src.n / G), tid, kThreads);
  if (src.token_scale) copy_async(buffer + l.token_scale, src.token_scale, 4 * src.n, tid, kThreads);
  if (probs)
    for (int h = 0; h < Group; ++h)
      copy_async(buffer + l.probs + h * l.probs_stride, probs + (static_cast<long long>(r) * Group + h) * s.tokens + t0, 4 * src.n, tid, kThreads);
}

// The probabilities of head h as landed (standalone outputs kernel).
template <int Group>
__device__ __forceinline__ const float* value_probs(const char* buffer, const Layout& l, const float* probs, const RegionShape& s, int r, int t0, int h) {
  return landed<float>(buffer, l.probs + h * l.probs_stride, probs + (static_cast<long long>(r) * Group + h) * s.tokens + t0);
}

// Metadata of value stage t0 for channel c = thread (threads past head_dim hold nothing); up to 8
// groups of tokens per stage. Hybrid: the compact zero index needs the asymmetric channels before c
// in the group, counted with ballots across the block (every thread must call this).
template <int D>
__device__ __forceinline__ void value_meta_load(const char* buffer, const Layout& l, const DeviceRegions& v, int r, int t0, Meta& m,
                                                int (&warp_count)[8][kThreads / 32]) {
  const RegionShape& s = v.shape;
  const int G = s.group_size, c = threadIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const ValueSources src = value_sources(v, nullptr, r, t0 < s.tokens ? t0 : 0);
  const int groups = t0 < s.tokens ? src.n / G : 0;
  const bool live = c < D;
  const char* scales = landed<char>(buffer, l.scales, src.scales);
  const int offset = packed::sym_offset(s.bits, s.twos);
  unsigned asym_mask = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    m.scale[j] = m.zero[j] = 0.0f;
    if (j >= groups || !live) continue;
    bool sign;
    m.scale[j] = meta_value(scales, j * D + c, s.meta_fp16, sign);
    m.zero[j] = -static_cast<float>(offset) * m.scale[j];
    if (s.mode == GroupMode::asym) m.zero[j] = zero_value(landed<char>(buffer, l.zeros, src.zeros), j * D + c, s.meta_fp16);
    if (s.mode == GroupMode::hybrid && sign) asym_mask |= 1u << j;
  }
  if (s.mode != GroupMode::hybrid) return;
  unsigned ballots[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    ballots[j] = __ballot_sync(0xffffffffu, (asym_mask >> j) & 1u);
    if (lane == 0) warp_count[j][warp] = __popc(ballots[j]);
  }
  __syncthreads();
  if (!live) return;
  const std::uint32_t* zero_base = landed<std::uint32_t>(buffer, l.zero_base, src.zero_base);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (!((asym_mask >> j) & 1u)) continue;
    int before = __popc(ballots[j] & ((1u << lane) - 1u));
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w)
      if (w < warp) before += warp_count[j][w];
    m.zero[j] = zero_value(v.zeros, static_cast<long long>(v.zero_offset[r]) + zero_base[j] + before, s.meta_fp16);
  }
}

template <int D>
struct ValueMetaSmem {
  float scale[8][D], zero[8][D];  // [group of the stage][channel]
};

template <int D>
__device__ __forceinline__ void value_meta_store(const Meta& m, ValueMetaSmem<D>& out) {
  if (threadIdx.x >= D) return;
#pragma unroll
  for (int j = 0; j < 8; ++j) out.scale[j][threadIdx.x] = m.scale[j], out.zero[j][threadIdx.x] = m.zero[j];
}

// p's side of one value stage: B fragments, the power-of-two scales and each group's sum of p.
template <int Bits, int Group>
struct ProbSmem {
  static constexpr int kFrags = kTokens / 32 * mma::kSteps<Bits> * mma::kPasses<Group> * 2;
  std::uint32_t frag[kFrags][32];  // [chunk][step][pass][b0/b1][lane]
  float sum[8][Group];             // [group of the stage][head]
  float unscale[Group];
};

// Builds ProbSmem from p_s [Group][kTokens] (shared; tokens past n must hold 0). Token scales, when
// given (landed, n entries), multiply p first, in place. Ends with __syncthreads.
template <int Bits, int Group>
__device__ void probs_prepare(float (&p_s)[Group][kTokens], const float* token_scale, int n, int group_size, ProbSmem<Bits, Group>& out,
                              float (&pscale_s)[Group]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int h = warp; h < Group; h += kThreads / 32) {
    float v[4], m = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int tok = lane + 32 * i;
      v[i] = tok < n ? p_s[h][tok] : 0.0f;
      if (token_scale && tok < n) v[i] *= token_scale[tok];
      p_s[h][tok] = v[i];
      m = fmaxf(m, fabsf(v[i]));
    }
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (group_size == 16) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float sum = v[i];
        for (int off = 1; off < 16; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        if (lane % 16 == 0) out.sum[2 * i + lane / 16][h] = sum;
      }
    } else {
      const int per = group_size / 32;  // lane values per group
      for (int j = 0; j < 4 / per; ++j) {
        float sum = 0.0f;
        for (int i = 0; i < per; ++i) sum += v[j * per + i];
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        if (lane == 0) out.sum[j][h] = sum;
      }
    }
    if (lane == 0) pscale_s[h] = mma::fp16_range_scale(m), out.unscale[h] = 1.0f / mma::fp16_range_scale(m);
  }
  __syncthreads();
  build_frags<Bits, Group>(p_s, pscale_s, kTokens / 32, out.frag);
}

// Calls fn(acc element, head, channel) for each of this lane's value outputs held by a live head.
template <int D, int Group, typename Fn>
__device__ __forceinline__ void for_lane_outputs(float (&acc)[D / 64][2][kLaneHeads<Group>], Fn fn) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int tile = 0; tile < D / 64; ++tile)
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int e = 0; e < kLaneHeads<Group>; ++e) {
        const int h = lane_head<Group>(t, e);
        if (h < Group) fn(acc[tile][k][e], h, 16 * (D / 64 * warp + tile) + g + 8 * k);
      }
}

// Adds one landed value stage (n live tokens) to the warp's outputs: acc[tile][k][i] for channel
// 16 * (tile-th m-tile of the warp) + g + 8k and head lane_head(t, i).
template <int Bits, int D, int Group>
__device__ __forceinline__ void value_compute(const std::uint32_t* codes, const ValueMetaSmem<D>& meta, const ProbSmem<Bits, Group>& ps,
                                              int group_size, int n, float (&acc)[D / 64][2][kLaneHeads<Group>]) {
  constexpr int kSteps = mma::kSteps<Bits>, kPasses = mma::kPasses<Group>, kTiles = D / 64;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  float c[kTiles][kPasses][4] = {};
  int done = 0;
#pragma unroll
  for (int chunk = 0; chunk < kTokens / 32; ++chunk) {
    if (chunk * 32 >= n) break;
    std::uint32_t w[kTiles][2][Bits];  // [tile][row g / g+8][word]
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
      for (int k = 0; k < 2; ++k)
#pragma unroll
        for (int b = 0; b < Bits; ++b) w[tile][k][b] = codes[(chunk * D + 16 * (kTiles * warp + tile) + g + 8 * k) * Bits + b];
#pragma unroll
    for (int st = 0; st < kSteps; ++st) {
#pragma unroll
      for (int tile = 0; tile < kTiles; ++tile) chunk_mma<Bits, Group>(w[tile][0], w[tile][1], st, t, &ps.frag[chunk * kSteps * kPasses * 2], lane, c[tile]);
      done += mma::closes<Bits>(st);
      if (mma::closes<Bits>(st) && done % group_size == 0) {
        const int j = done / group_size - 1;
#pragma unroll
        for (int tile = 0; tile < kTiles; ++tile) {
#pragma unroll
          for (int k = 0; k < 2; ++k) {
            const int ch = 16 * (kTiles * warp + tile) + g + 8 * k;
            const float scale = meta.scale[j][ch], zero = meta.zero[j][ch] - mma::kPlaneConstant<Bits> * scale;
#pragma unroll
            for (int i = 0; i < kLaneHeads<Group>; ++i) {
              const int h = lane_head<Group>(t, i);
              if (h < Group) acc[tile][k][i] += scale * (combined<Group>(c[tile], k, i) * ps.unscale[h]) + zero * ps.sum[j][h];
            }
          }
#pragma unroll
          for (int pass = 0; pass < kPasses; ++pass)
#pragma unroll
            for (int e = 0; e < 4; ++e) c[tile][pass][e] = 0.0f;
        }
      }
    }
  }
}

}  // namespace kvq::gpu::stage
