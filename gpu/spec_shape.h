#pragma once
// The device shape (gpu/region.h) of a quantized tensor spec (core/spec.h), for hosts that build
// packed regions on the GPU from a spec: kvq bench's cuda backend and the GPU tests.
#include "core/spec.h"
#include "gpu/region.h"

namespace kvq::gpu {

inline RegionShape region_shape(const TensorSpec& t, int tokens, int head_dim) {
  RegionShape s;
  s.tokens = tokens;
  s.head_dim = head_dim;
  s.bits = t.bits;
  s.group_size = t.group_size;
  s.channel_axis = t.group_axis == GroupAxis::channel;
  s.mode = t.mode == Mode::sym ? GroupMode::sym : t.mode == Mode::asym ? GroupMode::asym : GroupMode::hybrid;
  s.twos = t.sym_levels == SymLevels::twos;
  s.hybrid_asym_bits = t.hybrid_asym_bits == HybridAsymBits::b ? t.bits : t.bits - 1;
  s.meta_fp16 = t.meta == MetaPrecision::fp16;
  return s;
}

}  // namespace kvq::gpu
