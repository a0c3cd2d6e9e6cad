#pragma once
// Internal to gpu/attention*.cu: the parts a split sequence writes (unnormalized output o, running max
// m and sum l per head), and the fused attention over an InnerQ cache, one translation unit per pair of
// key/value bit widths (attention_inner_k*v*.cu) so that they compile in parallel.
#include <cmath>

#include "gpu/attention.h"

namespace kvq::gpu::attention_detail {

struct Parts {
  float* o;   // [parts][regions][group][D]
  float* ml;  // [parts][regions][group][2]
  int regions, group, head_dim;
  // Head h of region r in part `part`.
  __host__ __device__ long long row(int part, int r, int h) const { return (static_cast<long long>(part) * regions + r) * group + h; }
  // The same row named by head_row = r * group + h (which can pass an int's range).
  __host__ __device__ long long row(int part, long long head_row) const { return row(part, 0, 0) + head_row; }
};

// A block's warps, each with its own running max m, sum l and unnormalized output o per head, in
// shared memory.
template <int Warps, int Group, int D>
struct WarpParts {
  float m[Warps][Group], l[Warps][Group];
  float o[Warps][Group][D];
};

// One step of a warp's online softmax over a stretch of scores, four per lane (-inf where there is
// none): the stretch's max over the warp joins the running max m, e[k] = e^(s[k] - m), and the lane's
// share l of the running sum is rescaled and takes the lane's e. Returns the rescaling factor
// e^(m_before - m) for the accumulators (0 on the warp's first stretch). Every lane of the warp calls it.
__device__ __forceinline__ float warp_softmax_step(const float (&s)[4], float& m, float& l, float (&e)[4]) {
  float mx = -INFINITY;
#pragma unroll
  for (int k = 0; k < 4; ++k) mx = fmaxf(mx, s[k]);
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  const float m_new = fmaxf(m, mx);
  const float corr = __expf(m - m_new);
  m = m_new;
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    e[k] = __expf(s[k] - m_new);
    sum += e[k];
  }
  l = l * corr + sum;
  return corr;
}

// After a barrier: the block's warps merged (max-rescaled, in warp order) into part `part` of region r,
// for heads [0, group) (a kernel built for up to Group heads may run fewer).
template <int Warps, int Group, int D>
__device__ void write_part(const WarpParts<Warps, Group, D>& w, const Parts& parts, int part, int r, int group = Group) {
  for (int i = threadIdx.x; i < group * D; i += blockDim.x) {
    const int h = i / D, c = i % D;
    float mm = -INFINITY;
    for (int k = 0; k < Warps; ++k) mm = fmaxf(mm, w.m[k][h]);
    float o = 0.0f, ll = 0.0f;
    for (int k = 0; k < Warps; ++k)
      if (w.m[k][h] != -INFINITY) {
        const float f = __expf(w.m[k][h] - mm);
        o += f * w.o[k][h][c];
        ll += f * w.l[k][h];
      }
    const long long row = parts.row(part, r, h);
    parts.o[row * D + c] = o;
    if (c == 0) parts.ml[2 * row] = mm, parts.ml[2 * row + 1] = ll;
  }
}

// The lane-owned fused kernel (gpu/attention_lane.cuh), which also takes the fp16 windows: keys of
// channel-axis groups 32..128 (a lane's span in one group), values of token-axis groups 32..128, fp16
// metadata, one query head per kv head, values on 16 bytes (aligned16: their stretches are copied with
// cp.async).
inline bool lane_attention_supported(const AttentionParams& p) {
  const RegionShape &ks = p.keys.shape, &vs = p.values.shape;
  const auto size = [](int g) { return g == 32 || g == 64 || g == 128; };
  return p.group == 1 && ks.meta_fp16 && vs.meta_fp16 && size(ks.group_size) && ks.group_size <= ks.head_dim && size(vs.group_size) &&
         vs.tokens % vs.group_size == 0 && aligned16(p.values);
}

inline Parts parts_of(float* scratch, int regions, int group, int head_dim, int splits) {
  return {scratch, scratch + static_cast<long long>(splits + 1) * regions * group * head_dim, regions, group, head_dim};
}

// Launches the fused kernel over p's quantized tokens into parts [0, used); one per built bit pair.
// windows_taken: the kernel also took the fp16 windows (each part its share), so they need no launch.
cudaError_t inner_k3v2(const AttentionParams& p, const Parts& parts, int& used, bool& windows_taken, cudaStream_t stream);
cudaError_t inner_k3v3(const AttentionParams& p, const Parts& parts, int& used, bool& windows_taken, cudaStream_t stream);
cudaError_t inner_k2v2(const AttentionParams& p, const Parts& parts, int& used, bool& windows_taken, cudaStream_t stream);
cudaError_t inner_k4v4(const AttentionParams& p, const Parts& parts, int& used, bool& windows_taken, cudaStream_t stream);

}  // namespace kvq::gpu::attention_detail
