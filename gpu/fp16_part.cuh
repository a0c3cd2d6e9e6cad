#pragma once
// Internal to gpu/attention*.cu: fp16 attention over a run of tokens into one part (the fp16 fused
// kernel, and the fp16 windows beside an InnerQ cache).
#include <cuda_fp16.h>

#include <cmath>

#include "gpu/attention_parts.h"

namespace kvq::gpu::attention_detail {

// fp16 attention over tokens [a, b) of one region: each warp takes 8-token chunks in turn, with its
// own online softmax (lane l holds channels [l * D/32, (l+1) * D/32)), and leaves its running max,
// sum and unnormalized output in slot `slot0 + warp` of sh (empty where it took no token: m = -inf).
template <int D, int Group>
using Fp16Smem = WarpParts<4, Group, D>;

template <int D, int Group, int Slots>
__device__ void fp16_warp_parts(const __half* keys, const __half* values, int a, int b, const float* q, float scale, WarpParts<Slots, Group, D>& sh,
                                int slot0) {
  constexpr int kPer = D / 32, kChunk = 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float qr[Group][kPer], m[Group], l[Group], acc[Group][kPer];
#pragma unroll
  for (int h = 0; h < Group; ++h) {
    m[h] = -INFINITY, l[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < kPer; ++e) qr[h][e] = q[h * D + lane * kPer + e] * scale, acc[h][e] = 0.0f;
  }
  for (int base = a + warp * kChunk; base < b; base += 4 * kChunk) {
    float k[kChunk][kPer], v[kChunk][kPer];
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      const int tok = min(base + j, b - 1);  // past the end: a live row, masked below
      const __half* krow = keys + static_cast<long long>(tok) * D + lane * kPer;
      const __half* vrow = values + static_cast<long long>(tok) * D + lane * kPer;
      if constexpr (kPer == 4) {
        const uint2 kw = __ldg(reinterpret_cast<const uint2*>(krow)), vw = __ldg(reinterpret_cast<const uint2*>(vrow));
        const float2 k0 = __half22float2(*reinterpret_cast<const __half2*>(&kw.x)), k1 = __half22float2(*reinterpret_cast<const __half2*>(&kw.y));
        const float2 v0 = __half22float2(*reinterpret_cast<const __half2*>(&vw.x)), v1 = __half22float2(*reinterpret_cast<const __half2*>(&vw.y));
        k[j][0] = k0.x, k[j][1] = k0.y, k[j][2] = k1.x, k[j][3] = k1.y;
        v[j][0] = v0.x, v[j][1] = v0.y, v[j][2] = v1.x, v[j][3] = v1.y;
      } else {
        const unsigned kw = __ldg(reinterpret_cast<const unsigned*>(krow)), vw = __ldg(reinterpret_cast<const unsigned*>(vrow));
        const float2 k0 = __half22float2(*reinterpret_cast<const __half2*>(&kw)), v0 = __half22float2(*reinterpret_cast<const __half2*>(&vw));
        k[j][0] = k0.x, k[j][1] = k0.y;
        v[j][0] = v0.x, v[j][1] = v0.y;
      }
    }
#pragma unroll
    for (int h = 0; h < Group; ++h) {
      float s[kChunk];
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < kPer; ++e) dot += qr[h][e] * k[j][e];
        s[j] = dot;
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
#pragma unroll
        for (int j = 0; j < kChunk; ++j) s[j] += __shfl_xor_sync(0xffffffffu, s[j], off);
      float mx = m[h];
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        if (base + j >= b) s[j] = -INFINITY;
        mx = fmaxf(mx, s[j]);
      }
      const float corr = __expf(m[h] - mx);  // m = -inf at first: 0
      m[h] = mx;
      l[h] *= corr;
#pragma unroll
      for (int e = 0; e < kPer; ++e) acc[h][e] *= corr;
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        const float pj = __expf(s[j] - mx);
        l[h] += pj;
#pragma unroll
        for (int e = 0; e < kPer; ++e) acc[h][e] += pj * v[j][e];
      }
    }
  }
#pragma unroll
  for (int h = 0; h < Group; ++h) {
    if (lane == 0) sh.m[slot0 + warp][h] = m[h], sh.l[slot0 + warp][h] = l[h];
#pragma unroll
    for (int e = 0; e < kPer; ++e) sh.o[slot0 + warp][h][lane * kPer + e] = acc[h][e];
  }
}

// The 4 warps' fp16 attention over tokens [a, b) of one region, merged into part `part`.
template <int D, int Group>
__device__ void fp16_part(const __half* keys, const __half* values, int a, int b, const float* q, float scale, Parts parts, int part, int r,
                          Fp16Smem<D, Group>& sh) {
  fp16_warp_parts<D, Group>(keys, values, a, b, q, scale, sh, 0);
  __syncthreads();
  write_part(sh, parts, part, r);
}

// The end of a one-head block that streamed a run of quantized values (the fused one-head kernel, and
// the one-head values kernel's softmax): each warp's output sums (values.store_sums of acc), its running
// max m and its lane's share l of the sum go into slots 0-3 of w; the block's share of the fp16 windows
// (tokens [part * window / P, (part + 1) * window / P) of P = gridDim.x parts) into slots 4-7; all
// eight merge into part `part`. (The windows as one more part, taken by the last block after its run,
// held every block's end back by that block's fp16 reads, one 8-token chunk per warp at a time: 3-4 us
// at the paper shape.) Window keys and values: [regions][window][D]; queries: [regions][D].
template <int D>
using OneHeadSmem = WarpParts<8, 1, D>;

template <int D, class Values, int MTiles>
__device__ void one_head_part(const Values& values, const float (&acc)[MTiles][2], float m, float l, OneHeadSmem<D>& w, const Parts& parts, int part,
                              int r, const __half* window_keys, const __half* window_values, int window, const float* queries, float scale) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int off = 16; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
  values.store_sums(acc, w.o[warp][0]);
  if (lane == 0) w.m[warp][0] = m, w.l[warp][0] = l;
  const int shares = static_cast<int>(gridDim.x);
  const int a = static_cast<int>(static_cast<long long>(part) * window / shares), b = static_cast<int>(static_cast<long long>(part + 1) * window / shares);
  const long long base = static_cast<long long>(r) * window * D;
  if (a < b)
    fp16_warp_parts<D, 1>(window_keys + base, window_values + base, a, b, queries + static_cast<long long>(r) * D, scale, w, 4);
  else if (lane == 0)
    w.m[4 + warp][0] = -INFINITY, w.l[4 + warp][0] = 0.0f;  // no share: write_part skips the slot
  __syncthreads();
  write_part(w, parts, part, r);
}

}  // namespace kvq::gpu::attention_detail
