#pragma once
// Lane-owned chunks: the tensor-core layout of the inner-layout GEMVs (scores_mma.cu, outputs_mma.cu).
//
// In an m16n8k16 tile, lane (g, t) holds rows g and g+8 and, in every k-step, the k-slots 2t, 2t+1,
// 2t+8, 2t+9. Since the reduction may visit its steps in any order, lane t feeds all its slots from
// ONE 32-code chunk of each of its rows (or one half of it, for head_dim 64 keys): it loads only that
// chunk straight from global memory, and the 4 lanes of a quad cover 4 chunks per step. B's 8 columns
// are then (unit u, part): column 2u + part is zero except in lane u's slots, where it carries the
// hi or lo fp16 part of the vector. So the accumulator columns 2t, 2t+1 on lane t hold the dot
// product of lane t's own chunk, which lies in one quantization group: the group's scale multiplies
// it in registers, with no cross-group mixing and no shared-memory staging of the codes.
#include <cstdint>

#include "gpu/mma.cuh"

namespace kvq::gpu::lanes {

// k-steps per tile: a lane feeds 4 slots per row per step, so a whole chunk (32 codes, with the bit-2
// plane of 3-bit codes as extra steps) takes 4x mma::kSteps; a half chunk 2x.
template <int Bits, bool Half>
inline constexpr int kSteps = mma::kSteps<Bits> * (Half ? 2 : 4);

// The chunk step (mma.cuh's `st`) step j decodes, in the lane's view (half_view), and the sub-lane
// whose slot pattern it uses; a half lane takes every other chunk step.
template <bool Half>
__host__ __device__ constexpr int view_step(int j) {
  return (Half ? 2 : 1) * (j / 4);
}
__host__ __device__ constexpr int sub_lane(int j) { return j % 4; }

// A half lane of parity 1 (codes 16..31 of the low planes, and of the bit-2 plane codes 8..15 and
// 24..31) moves its words to where parity 0 finds them, so the decode's shifts stay constants.
template <int Bits>
__device__ __forceinline__ void half_view(std::uint32_t (&w)[Bits], int parity) {
  if (parity == 0) return;
  if constexpr (Bits == 2) {
    w[0] = w[1];
  } else if constexpr (Bits == 3) {
    w[0] = w[1];
    w[2] >>= 8;
  } else {
#pragma unroll
    for (int k = 0; k < Bits / 2; ++k) w[k] = w[k + Bits / 2];
  }
}

// A fragment (mma.cuh order) of step j from the lane's chunk words of rows g and g+8.
template <int Bits, bool Half>
__device__ __forceinline__ void a_fragment(const std::uint32_t* row0, const std::uint32_t* row8, int j, std::uint32_t (&a)[4]) {
  const int st = view_step<Half>(j), t = sub_lane(j);
  a[0] = mma::decode_pair<Bits>(row0, st, t, 0);
  a[1] = mma::decode_pair<Bits>(row8, st, t, 0);
  a[2] = mma::decode_pair<Bits>(row0, st, t, 1);
  a[3] = mma::decode_pair<Bits>(row8, st, t, 1);
}

// One B register pair of unit u in step j: part (0 hi, 1 lo) of weight * v at the 4 positions the
// unit's slots decode; v = the unit's 32 vector entries along its chunk (already range-scaled).
template <int Bits, bool Half>
__device__ __forceinline__ uint2 b_entry(const float* v, int j, int parity, int part) {
  const int st = view_step<Half>(j) + (Half ? parity : 0), t = sub_lane(j);
  const float w = mma::weight<Bits>(st);
  __half h[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) h[e] = mma::split_part(w * v[mma::phys<Bits>(st, t, e)], part);
  return make_uint2(mma::pack_half2(h[0], h[1]), mma::pack_half2(h[2], h[3]));
}

}  // namespace kvq::gpu::lanes
