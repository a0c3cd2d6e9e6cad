// q . K^T over channel-axis keys on the tensor cores (mma.sync m16n8k16, fp16 in, fp32 out).
// A = codes (16 tokens x 16 channels) as exact fp16: 2- and 3-bit codes become 1 + f/4 by
// placing f in the mantissa (one shift and one LOP3 per two codes), whose constant 1 is taken
// back through the group's sum of q; 4- and 8-bit codes become f with the 1024-magic trick.
// B = the queries of the GQA group (n = 8 columns), split into fp16 hi + lo parts so the product
// keeps ~22 bits of q, prepared once per block in shared memory. C accumulates one group of G
// channels, then scale * C + (zero_eff - K * scale) * sum(q over the group) adds it in fp32.
// Blocks loop over their share of the tokens so the set-up is paid a few times per region.
// Channels may be visited in any order, so each thread decodes the pairs its fragment slots
// make cheap and loads q in the same order (phys() below).
#include <cuda_fp16.h>

#include <algorithm>

#include "core/packed.h"
#include "gpu/cuda_check.h"
#include "gpu/meta.cuh"
#include "gpu/scores_mma.h"

namespace kvq::gpu {
namespace {

constexpr int kWarpTokens = 32;  // a warp covers 32 tokens = one hybrid zero-block (channel axis)
constexpr int kBlockTokens = 128;

// k-steps (16 channels each) per 32-channel chunk: 2, plus 2 for the bit-2 plane of 3-bit codes.
template <int Bits>
inline constexpr int kStepsPerChunk = Bits == 3 ? 4 : 2;

// Channel (within its chunk) of fragment slot e (0..3: k = 2t, 2t+1, 2t+8, 2t+9) of lane t (0..3)
// in k-step st, for the decode in decode_pair().
template <int Bits>
__device__ __forceinline__ int phys(int st, int t, int e) {
  if (Bits == 2 || (Bits == 3 && st < 2)) {
    const int k = t + (e >= 2 ? 4 : 0);
    return 16 * st + k + (e & 1) * 8;  // (w >> 2k) holds codes k, k+8 of the half-chunk
  }
  if (Bits == 3) {
    const int s = 8 * (st - 2) + t + (e >= 2 ? 4 : 0);
    return s + (e & 1) * 16;  // bit-2 plane: (w2 >> s) holds codes s, s+16
  }
  if (Bits == 4) return 16 * st + (e >= 2 ? 8 : 0) + t + (e & 1) * 4;  // (w >> 4t): codes t, t+4 of a word
  return 16 * st + 4 * t + (e >= 2 ? 1 : 0) + (e & 1) * 2;             // 8 bits: (w >> 8j): codes j, j+2
}

// Weight of the B operand per plane, and K: A = W^-1-scaled codes plus a constant whose total
// contribution is K * sum(q) (2/3 bits: A = 1 + f/4, W = 4 for the low plane, 16 for bit 2).
template <int Bits>
inline constexpr int kLowWeight = Bits <= 3 ? 4 : 1;
template <int Bits>
inline constexpr int kPlaneConstant = Bits == 2 ? 4 : Bits == 3 ? 20 : 0;

// The fp16 pair for fragment slots (2p, 2p+1) of lane t in k-step st of one chunk.
template <int Bits>
__device__ __forceinline__ std::uint32_t decode_pair(const std::uint32_t* chunk, int st, int t, int p) {
  if (Bits == 2 || (Bits == 3 && st < 2)) {
    // Codes k, k+8 (k = t + 4p) sit at bits 2k, 2k+16; move them to bits 8, 24: 1 + f/4.
    const std::uint32_t w = chunk[st];
    const std::uint32_t moved = p == 0 ? w << (8 - 2 * t) : w >> (2 * t);
    return (moved & 0x03000300u) | 0x3C003C00u;
  }
  if (Bits == 3) {
    // Bit 2 of codes s, s+16 (s = 8h + t + 4p) sits at bits s, s+16; move it to bits 8, 24.
    const int s = 8 * (st - 2) + t + 4 * p;
    const std::uint32_t w = chunk[2];
    const std::uint32_t moved = st == 2 ? w << (8 - s) : w >> (s - 8);
    return (moved & 0x01000100u) | 0x3C003C00u;
  }
  const std::uint32_t bits = Bits == 4 ? (chunk[2 * st + p] >> (4 * t)) & 0x000F000Fu : (chunk[4 * st + t] >> (8 * p)) & 0x00FF00FFu;
  std::uint32_t out;  // 1024 + f minus 1024, exact
  asm("sub.f16x2 %0, %1, %2;" : "=r"(out) : "r"(bits | 0x64006400u), "r"(0x64006400u));
  return out;
}

__device__ __forceinline__ void mma(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ std::uint32_t pack_half2(__half lo, __half hi) {
  return static_cast<std::uint32_t>(__half_as_ushort(lo)) | (static_cast<std::uint32_t>(__half_as_ushort(hi)) << 16);
}

// One token's row of codes (RW words), with the widest loads its alignment allows; zeros past the end.
template <int RW>
__device__ __forceinline__ void load_row(const std::uint32_t* row, bool live, std::uint32_t (&w)[RW]) {
  if (!live) {
#pragma unroll
    for (int i = 0; i < RW; ++i) w[i] = 0u;
    return;
  }
  if constexpr (RW % 4 == 0) {
#pragma unroll
    for (int i = 0; i < RW; i += 4) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(row) + i / 4);
      w[i] = v.x, w[i + 1] = v.y, w[i + 2] = v.z, w[i + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < RW; i += 2) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(row) + i / 2);
      w[i] = v.x, w[i + 1] = v.y;
    }
  }
}

// Lane l of a warp owns token warp_token0 + l's metadata: its groups' scales and effective zero
// points (x^ = f * scale + zero_eff), loaded once up front so the compute loop never waits on a
// load; the epilogue of each group takes them from the row's lane with a shuffle.
template <int Bits, int D>
__device__ __forceinline__ void lane_metadata(const ScoresParams& p, int r, int tok, int lane, float (&scale)[D / 16],
                                              float (&zero_eff)[D / 16]) {
  const RegionShape s = p.keys.shape;
  const int groups_per_row = D / s.group_size, offset = packed::sym_offset(Bits, s.twos);
  const long long group0 = static_cast<long long>(r) * s.groups() + static_cast<long long>(tok) * groups_per_row;
  const bool live = tok < s.tokens;
  int asym_groups = 0;
#pragma unroll
  for (int j = 0; j < D / 16; ++j) {
    scale[j] = 0.0f;
    zero_eff[j] = 0.0f;
    if (!live || j >= groups_per_row) continue;
    bool sign;
    scale[j] = meta_value(p.keys.scales, group0 + j, s.meta_fp16, sign);
    const bool asym = s.mode == GroupMode::asym || (s.mode == GroupMode::hybrid && sign);
    zero_eff[j] = asym ? 0.0f : -static_cast<float>(offset) * scale[j];
    if (s.mode == GroupMode::asym) zero_eff[j] = zero_value(p.keys.zeros, group0 + j, s.meta_fp16);
    asym_groups += asym;
  }
  if (s.mode != GroupMode::hybrid) return;
  // Compact zero points: this token's first one is its zero-block's base plus the asymmetric groups
  // of the tokens before it in the block (the warp's 32 tokens are one block).
  int before = asym_groups;
#pragma unroll
  for (int k = 1; k < 32; k <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, before, k);
    if (lane >= k) before += up;
  }
  before -= asym_groups;
  if (!live) return;
  long long z = p.keys.zero_offset[r] + p.keys.zero_base[static_cast<long long>(r) * s.zero_blocks() + tok / 32] + before;
#pragma unroll
  for (int j = 0; j < D / 16; ++j) {
    if (j >= groups_per_row) continue;
    bool sign;
    meta_value(p.keys.scales, group0 + j, s.meta_fp16, sign);
    if (sign) zero_eff[j] = zero_value(p.keys.zeros, z++, s.meta_fp16);
  }
}

// x[i] for a run-time i that is the same in every lane: selects instead of indexing, so x stays in registers.
template <int N>
__device__ __forceinline__ float pick(const float (&x)[N], int i) {
  float v = x[0];
#pragma unroll
  for (int j = 1; j < N; ++j) v = i == j ? x[j] : v;
  return v;
}

template <int Bits, int D, int Group>
__global__ void __launch_bounds__(128, 3) scores_mma_kernel(ScoresParams p) {
  constexpr int kChunks = D / 32, kSteps = kStepsPerChunk<Bits>, RW = kChunks * Bits, kFrags = kChunks * kSteps * 4;
  const RegionShape s = p.keys.shape;
  const int r = blockIdx.y, G = s.group_size;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;

  __shared__ float q_s[Group][D];
  __shared__ float qsum_s[D / 16][Group];
  __shared__ float qscale_s[Group];                // a power of two bringing max|q| near 2^8, so fp16 keeps it
  __shared__ std::uint32_t bfrag_s[kFrags][32];  // per (chunk, step, hi/lo, k): each lane's B register
  for (int i = threadIdx.x; i < Group * D; i += blockDim.x) q_s[i / D][i % D] = p.queries[static_cast<long long>(r) * Group * D + i];
  __syncthreads();
  // Per head (one warp each): max |q| and the sums of q over each group of G channels.
  for (int h = warp; h < Group; h += 4) {
    float m = 0.0f;
    const int L = G < 32 ? G : 32;  // lanes per segment of a group within a 32-channel chunk
#pragma unroll
    for (int j = 0; j < D / 32; ++j) {
      const float v = q_s[h][32 * j + lane];
      m = fmaxf(m, fabsf(v));
      float sum = v;
      for (int off = 1; off < L; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      if (lane % L == 0) {
        const int gi = (32 * j + lane) / G;
        qsum_s[gi][h] = (32 * j) % G == 0 ? sum : qsum_s[gi][h] + sum;
      }
    }
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (lane == 0) qscale_s[h] = m > 0.0f ? exp2f(static_cast<float>(8 - ilogbf(m))) : 1.0f;
  }
  __syncthreads();
  // B fragments: column n = g is query head g (zero past Group), slots in phys() order.
  for (int f = warp; f < kFrags; f += 4) {
    const int ch = f / (kSteps * 4), st = f / 4 % kSteps, lo = f / 2 % 2, k = f % 2;
    __half half[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float v = 0.0f;
      if (g < Group) v = q_s[g][ch * 32 + phys<Bits>(st, t, 2 * k + e)] * qscale_s[g] * ((Bits == 3 && st >= 2) ? 16.0f : kLowWeight<Bits>);
      const __half hi = __float2half_rn(v);
      half[e] = lo ? __float2half_rn(v - __half2float(hi)) : hi;
    }
    bfrag_s[f][lane] = pack_half2(half[0], half[1]);
  }
  __syncthreads();

  // This lane's output columns (heads 2t, 2t+1) and their undoing of the q scale.
  const int h0 = 2 * t, h1 = 2 * t + 1;
  const float unscale0 = h0 < Group ? 1.0f / qscale_s[h0] : 0.0f;
  const float unscale1 = h1 < Group ? 1.0f / qscale_s[h1] : 0.0f;
  const std::uint32_t* codes = p.keys.codes + static_cast<long long>(r) * s.code_words();
  for (int warp_token0 = (blockIdx.x * 4 + warp) * kWarpTokens; warp_token0 < s.tokens;
       warp_token0 += gridDim.x * 4 * kWarpTokens) {
    // This lane's rows of codes (tokens g, g+8, g+16, g+24 of the warp) and its token's metadata.
    std::uint32_t w[4][RW];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int row = warp_token0 + g + 8 * k;
      load_row<RW>(codes + static_cast<long long>(row) * RW, row < s.tokens, w[k]);
    }
    float lane_scale[D / 16], lane_zero[D / 16];
    lane_metadata<Bits, D>(p, r, warp_token0 + lane, lane, lane_scale, lane_zero);
    // Both 16-token tiles at once, hi and lo products in separate accumulators: four independent
    // mma chains instead of one, so the tensor cores' latency overlaps.
    float score[2][4] = {}, chi[2][4] = {}, clo[2][4] = {};
    int channels = 0;
#pragma unroll
    for (int ch = 0; ch < kChunks; ++ch) {
#pragma unroll
      for (int st = 0; st < kSteps; ++st) {
        std::uint32_t a[2][4];
#pragma unroll
        for (int tile = 0; tile < 2; ++tile) {
          const std::uint32_t* c0 = &w[2 * tile][ch * Bits];
          const std::uint32_t* c1 = &w[2 * tile + 1][ch * Bits];
          a[tile][0] = decode_pair<Bits>(c0, st, t, 0);
          a[tile][1] = decode_pair<Bits>(c1, st, t, 0);
          a[tile][2] = decode_pair<Bits>(c0, st, t, 1);
          a[tile][3] = decode_pair<Bits>(c1, st, t, 1);
        }
        const int f = (ch * kSteps + st) * 4;
        const std::uint32_t b0 = bfrag_s[f][lane], b1 = bfrag_s[f + 1][lane], b2 = bfrag_s[f + 2][lane], b3 = bfrag_s[f + 3][lane];
        mma(chi[0], a[0], b0, b1);
        mma(chi[1], a[1], b0, b1);
        mma(clo[0], a[0], b2, b3);
        mma(clo[1], a[1], b2, b3);
        // A group closes after its last channel step; the bit-2 plane of a 3-bit chunk comes last.
        if (Bits != 3 || st == kSteps - 1) {
          channels += Bits == 3 ? 32 : 16;
          if (channels % G == 0) {
            const int gi = channels / G - 1;
            const float sel_scale = pick(lane_scale, gi), sel_zero = pick(lane_zero, gi);
            const float q0 = h0 < Group ? qsum_s[gi][h0] : 0.0f, q1 = h1 < Group ? qsum_s[gi][h1] : 0.0f;
#pragma unroll
            for (int tile = 0; tile < 2; ++tile)
#pragma unroll
              for (int k = 0; k < 2; ++k) {  // rows g and g + 8 of the tile
                const int src = tile * 16 + g + 8 * k;
                const float scale = __shfl_sync(0xffffffffu, sel_scale, src);
                const float zero = __shfl_sync(0xffffffffu, sel_zero, src) - kPlaneConstant<Bits> * scale;
                score[tile][2 * k] += scale * ((chi[tile][2 * k] + clo[tile][2 * k]) * unscale0) + zero * q0;
                score[tile][2 * k + 1] += scale * ((chi[tile][2 * k + 1] + clo[tile][2 * k + 1]) * unscale1) + zero * q1;
              }
#pragma unroll
            for (int e = 0; e < 4; ++e) chi[0][e] = chi[1][e] = clo[0][e] = clo[1][e] = 0.0f;
          }
        }
      }
    }
#pragma unroll
    for (int tile = 0; tile < 2; ++tile)
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int row = warp_token0 + tile * 16 + g + 8 * k;
        if (row >= s.tokens) continue;
        const float sigma = p.token_scale ? p.token_scale[static_cast<long long>(r) * s.tokens + row] : 1.0f;
        const float* sc = score[tile];
        if (h0 < Group) p.scores[(static_cast<long long>(r) * Group + h0) * s.tokens + row] = p.token_scale ? sc[2 * k] * sigma : sc[2 * k];
        if (h1 < Group) p.scores[(static_cast<long long>(r) * Group + h1) * s.tokens + row] = p.token_scale ? sc[2 * k + 1] * sigma : sc[2 * k + 1];
      }
  }
}

}  // namespace

bool scores_mma_supported(const RegionShape& s, int group) {
  const bool bits = s.bits == 2 || s.bits == 3 || s.bits == 4 || s.bits == 8;
  const bool dims = s.head_dim == 64 || s.head_dim == 128;
  const bool groups = s.group_size == 32 || s.group_size == 64 || s.group_size == 128 || (s.group_size == 16 && s.bits != 3);
  return bits && dims && groups && s.channel_axis && s.head_dim % s.group_size == 0 && group >= 1 && group <= 8;
}

cudaError_t scores_mma(const ScoresParams& p, cudaStream_t stream) {
  const RegionShape& s = p.keys.shape;
  if (!scores_mma_supported(s, p.group)) return cudaErrorInvalidValue;
  if (s.tokens == 0) return cudaSuccess;
  // Enough blocks for about 8 per multiprocessor, each looping over its share of the tokens.
  static int multiprocessors = 0;
  if (multiprocessors == 0) {
    int device = 0;
    KVQ_CUDA_TRY(cudaGetDevice(&device));
    KVQ_CUDA_TRY(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
  }
  const int tiles = (s.tokens + kBlockTokens - 1) / kBlockTokens;
  const int per_region = std::max(1, std::min(tiles, (8 * multiprocessors + p.keys.regions - 1) / p.keys.regions));
  const dim3 grid(static_cast<unsigned>(per_region), static_cast<unsigned>(p.keys.regions));
#define KVQ_SCORES_MMA(B, D)                                                                      \
  switch (p.group) {                                                                              \
    case 1: scores_mma_kernel<B, D, 1><<<grid, 128, 0, stream>>>(p); break;                       \
    case 2: scores_mma_kernel<B, D, 2><<<grid, 128, 0, stream>>>(p); break;                       \
    case 3: scores_mma_kernel<B, D, 3><<<grid, 128, 0, stream>>>(p); break;                       \
    case 4: scores_mma_kernel<B, D, 4><<<grid, 128, 0, stream>>>(p); break;                       \
    case 5: scores_mma_kernel<B, D, 5><<<grid, 128, 0, stream>>>(p); break;                       \
    case 6: scores_mma_kernel<B, D, 6><<<grid, 128, 0, stream>>>(p); break;                       \
    case 7: scores_mma_kernel<B, D, 7><<<grid, 128, 0, stream>>>(p); break;                       \
    default: scores_mma_kernel<B, D, 8><<<grid, 128, 0, stream>>>(p); break;                      \
  }
  const int key = s.bits * 1000 + s.head_dim;
  switch (key) {
    case 2064: KVQ_SCORES_MMA(2, 64) break;
    case 2128: KVQ_SCORES_MMA(2, 128) break;
    case 3064: KVQ_SCORES_MMA(3, 64) break;
    case 3128: KVQ_SCORES_MMA(3, 128) break;
    case 4064: KVQ_SCORES_MMA(4, 64) break;
    case 4128: KVQ_SCORES_MMA(4, 128) break;
    case 8064: KVQ_SCORES_MMA(8, 64) break;
    case 8128: KVQ_SCORES_MMA(8, 128) break;
    default: return cudaErrorInvalidValue;
  }
#undef KVQ_SCORES_MMA
  return cudaGetLastError();
}

}  // namespace kvq::gpu
