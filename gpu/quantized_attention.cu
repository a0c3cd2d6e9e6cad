// Decode attention over two gpu::TensorCache objects (gpu/quantized_attention.h).
#include <algorithm>

#include "core/packed.h"
#include "core/quant_math.h"
#include "gpu/cuda_check.h"
#include "gpu/dependent_launch.cuh"
#include "gpu/dispatch.cuh"
#include "gpu/meta.cuh"
#include "gpu/quantized_attention.h"
#include "gpu/reduce.cuh"
#include "gpu/region_arrays.cuh"

namespace kvq::gpu {
namespace {

constexpr int kRowsPerBlock = 4;  // one warp per window row

// One tensor as the windows' assembly reads it.
struct WindowSource {
  DeviceRegions region;  // every quantized token (shape.tokens)
  const __half* window;  // [regions][stride][head_dim]: sink rows, then recent rows
  int stride;
  const float* norm;  // keys' f, [regions][head_dim]; null: none
};

// Token t's values at this lane's Per channels [lane Per, (lane + 1) Per) in region r, as the packed
// format says (core/packed.h). The whole warp calls it: a hybrid group's zero point sits after the
// asymmetric groups before it in its zero-block, which the lanes count together.
template <class Meta, int Per>
__device__ void dequantized(const DeviceRegions& x, int r, int t, float (&v)[Per]) {
  const RegionShape& s = x.shape;
  const RegionArrays<Meta> a = region_arrays<Meta>(x, r);
  const int d = s.head_dim, G = s.group_size, b = s.bits, lane = threadIdx.x & 31, c0 = lane * Per;
  const bool hybrid = s.mode == GroupMode::hybrid;
  // row_first: token t's first group; block_first: its zero-block's (32 tokens on the channel axis, one
  // group of G on the token axis).
  long long row_first, block_first, block;
  if (s.channel_axis) {
    row_first = static_cast<long long>(t) * (d / G), block = t / packed::kTileTokens, block_first = block * packed::kTileTokens * (d / G);
  } else {
    row_first = static_cast<long long>(t / G) * d, block = t / G, block_first = row_first;
  }
  int zero_before = 0;  // hybrid: where the lane's next zero point sits (zero_base, then the asymmetric groups before it)
  if (hybrid) {
    int earlier = 0;
    for (long long g = block_first + lane; g < row_first; g += 32) earlier += sign_bit(a.scales[g]) ? 1 : 0;
    zero_before = static_cast<int>(a.zero_base[block]) + static_cast<int>(__reduce_add_sync(0xffffffffu, static_cast<unsigned>(earlier)));
  }
  if (s.channel_axis) {  // the lane's channels lie in one group (G >= 16 > Per)
    const long long gi = row_first + c0 / G;
    const Meta raw = a.scales[gi];
    const float scale = magnitude(raw);
    const bool asym = s.mode == GroupMode::asym || (hybrid && sign_bit(raw));
    if (hybrid)
      for (long long g = row_first; g < gi; ++g) zero_before += sign_bit(a.scales[g]) ? 1 : 0;
    const float zero = asym ? plain(a.zeros[hybrid ? zero_before : gi]) : 0.0f;
    const std::uint32_t* chunk = a.codes + (static_cast<long long>(t) * (d / 32) + c0 / 32) * b;
#pragma unroll
    for (int e = 0; e < Per; ++e) {
      const std::uint32_t f = packed::get_code(chunk, b, (c0 + e) % 32);
      v[e] = asym ? qmath::dequant_asym(f, scale, zero) : qmath::dequant_sym(f, scale, packed::sym_offset(b, s.twos));
    }
    return;
  }
  // Token axis: each channel is its own group.
  Meta raw[Per];
  int asym_count = 0;
#pragma unroll
  for (int e = 0; e < Per; ++e) {
    raw[e] = a.scales[row_first + c0 + e];
    asym_count += hybrid && sign_bit(raw[e]) ? 1 : 0;
  }
  if (hybrid) zero_before += warp_exclusive_sum(asym_count);
#pragma unroll
  for (int e = 0; e < Per; ++e) {
    const long long gi = row_first + c0 + e;
    const bool asym = s.mode == GroupMode::asym || (hybrid && sign_bit(raw[e]));
    const std::uint32_t f = packed::get_code(a.codes + (static_cast<long long>(t / packed::kTileTokens) * d + c0 + e) * b, b, t % packed::kTileTokens);
    const float scale = magnitude(raw[e]);
    v[e] = asym ? qmath::dequant_asym(f, scale, plain(a.zeros[hybrid ? zero_before : gi])) : qmath::dequant_sym(f, scale, packed::sym_offset(b, s.twos));
    zero_before += asym && hybrid ? 1 : 0;
  }
}

// Window row w of region r: the cache's token u, from the tensor's window or dequantized from its region
// (keys: times f, back to the values the window rows hold), as fp16.
template <int D>
__device__ void assemble_row(const WindowSource& x, int r, int u, int sink, __half* out, int rows, int w) {
  constexpr int kPer = D / 32;
  const int lane = threadIdx.x & 31, quantized = x.region.shape.tokens;
  __half* dst = out + (static_cast<long long>(r) * rows + w) * D + lane * kPer;
  if (u < sink || u >= sink + quantized) {
    const __half* src = x.window + (static_cast<long long>(r) * x.stride + (u < sink ? u : u - quantized)) * D + lane * kPer;
    if constexpr (kPer == 4) *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(src);
    else *reinterpret_cast<unsigned*>(dst) = *reinterpret_cast<const unsigned*>(src);
    return;
  }
  float v[kPer];
  if (x.region.shape.meta_fp16) dequantized<std::uint16_t, kPer>(x.region, r, u - sink, v);
  else dequantized<std::uint32_t, kPer>(x.region, r, u - sink, v);
#pragma unroll
  for (int e = 0; e < kPer; ++e) dst[e] = __float2half_rn(x.norm ? v[e] * x.norm[static_cast<long long>(r) * D + lane * kPer + e] : v[e]);
}

// Blocks (x, r): warp k assembles window row w = x kRowsPerBlock + k of region r (the cache's token w
// in the sink, w + n0 after it), keys and values. Block (0, r) also writes region r's folded queries,
// q f (the query of keys stored divided by f), when folded is not null.
template <int D>
__global__ void __launch_bounds__(32 * kRowsPerBlock) assemble_windows(WindowSource keys, WindowSource values, int sink, int n0, int rows, __half* out_keys,
                                                                        __half* out_values, const float* q, int group, float* folded) {
  wait_for_prior_kernels();
  const int r = blockIdx.y, w = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  if (folded && blockIdx.x == 0)
    for (int i = threadIdx.x; i < group * D; i += blockDim.x) {
      const long long at = static_cast<long long>(r) * group * D + i;
      folded[at] = q[at] * keys.norm[static_cast<long long>(r) * D + i % D];
    }
  if (w >= rows) return;  // the whole warp
  const int u = w < sink ? w : w + n0;
  assemble_row<D>(keys, r, u, sink, out_keys, rows, w);
  assemble_row<D>(values, r, u, sink, out_values, rows, w);
}

constexpr std::size_t kAlign = 256;
std::size_t aligned(std::size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Where each array lives in the workspace, for these caches and group.
struct Workspace {
  std::size_t folded = 0, window_keys = 0, window_values = 0, parts = 0, scores = 0, bytes = 0;
  int window_rows = 0, splits = 0, multiprocessors = 0;
};

struct Layout {
  bool inner = false, outer = false;
  int token_group = 1;  // the token-axis tensor's group size: the quantized tokens given attention_* are whole groups of it
};

Layout layout_of(const TensorCache& keys, const TensorCache& values) {
  const RegionShape &ks = keys.region().shape, &vs = values.region().shape;
  Layout l;
  l.inner = ks.channel_axis && !vs.channel_axis;
  l.outer = !ks.channel_axis && vs.channel_axis;
  l.token_group = l.inner ? vs.group_size : ks.group_size;
  return l;
}

bool go_together(const TensorCache& keys, const TensorCache& values, int group) {
  if (keys.status() != cudaSuccess || values.status() != cudaSuccess || group < 1 || group > 8) return false;
  const DeviceRegions &k = keys.region(), &v = values.region();
  const Layout l = layout_of(keys, values);
  return (l.inner || l.outer) && k.regions == v.regions && k.shape.head_dim == v.shape.head_dim &&
         keys.size() == values.size() && keys.sink_tokens() == values.sink_tokens();
}

cudaError_t multiprocessors(int& out) {
  int device = 0;
  KVQ_CUDA_TRY(cudaGetDevice(&device));
  return cudaDeviceGetAttribute(&out, cudaDevAttrMultiProcessorCount, device);
}

// The workspace's layout at capacity (window rows: see quantized_attention).
cudaError_t workspace_of(const TensorCache& keys, const TensorCache& values, int group, Workspace& w) {
  const DeviceRegions& k = keys.region();
  const int regions = k.regions, d = k.shape.head_dim;
  const int capacity = std::max(k.shape.allocated().tokens, values.region().shape.allocated().tokens);
  KVQ_CUDA_TRY(multiprocessors(w.multiprocessors));
  w.splits = attention_splits(regions, capacity, w.multiprocessors);
  w.window_rows = std::max(keys.window_stride(), values.window_stride()) + layout_of(keys, values).token_group;
  const std::size_t rows = static_cast<std::size_t>(regions) * group;
  std::size_t at = 0;
  auto take = [&](std::size_t& where, std::size_t bytes) { where = at, at += aligned(bytes); };
  take(w.folded, sizeof(float) * rows * d);
  take(w.window_keys, sizeof(__half) * regions * w.window_rows * d);
  take(w.window_values, sizeof(__half) * regions * w.window_rows * d);
  take(w.parts, sizeof(float) * attention_scratch_floats(regions, group, d, w.splits));
  take(w.scores, sizeof(float) * rows * capacity);
  w.bytes = at;
  return cudaSuccess;
}

}  // namespace

std::size_t quantized_attention_workspace(const TensorCache& keys, const TensorCache& values, int group) {
  Workspace w;
  if (!go_together(keys, values, group) || workspace_of(keys, values, group, w) != cudaSuccess) return 0;
  return w.bytes;
}

cudaError_t quantized_attention(const TensorCache& keys, const TensorCache& values, const CacheAttentionParams& p, cudaStream_t stream) {
  if (!go_together(keys, values, p.group) || !p.queries || !p.outputs || !p.workspace) return cudaErrorInvalidValue;
  Workspace w;
  KVQ_CUDA_TRY(workspace_of(keys, values, p.group, w));
  const Layout l = layout_of(keys, values);
  const int sink = keys.sink_tokens();
  // n0: the quantized tokens both caches hold, in whole token-axis groups. Every other token is a window
  // row: size - n0 = sink + (the smaller count's recent window) + (under one group) < window_rows.
  const int n0 = std::min(keys.quantized_tokens(), values.quantized_tokens()) / l.token_group * l.token_group;
  const int rows = keys.size() - n0;
  if (rows > w.window_rows) return cudaErrorInvalidValue;  // not reached: the bound above
  char* base = static_cast<char*>(p.workspace);
  auto* window_keys = reinterpret_cast<__half*>(base + w.window_keys);
  auto* window_values = reinterpret_cast<__half*>(base + w.window_values);
  const DeviceRegions &k = keys.region(), &v = values.region();
  const int regions = k.regions, d = k.shape.head_dim;

  AttentionParams a;
  a.keys = k, a.values = v;
  a.keys.shape.tokens = a.values.shape.tokens = n0;  // regions keep their capacity strides
  a.queries = a.window_queries = p.queries;
  float* folded = nullptr;
  if (keys.norm() && n0 > 0) a.queries = folded = reinterpret_cast<float*>(base + w.folded);
  if (rows > 0 || folded) {
    const WindowSource ks{k, keys.window(), keys.window_stride(), keys.norm()};
    const WindowSource vs{v, values.window(), values.window_stride(), nullptr};
    const dim3 grid(static_cast<unsigned>(std::max(1, (rows + kRowsPerBlock - 1) / kRowsPerBlock)), static_cast<unsigned>(regions));
    KVQ_DISPATCH_HEAD_DIM(d, D, KVQ_CUDA_TRY(launch_kernel(assemble_windows<D>, grid, dim3(32 * kRowsPerBlock), 0, stream, ks, vs, sink, n0, rows, window_keys,
                                                           window_values, p.queries, p.group, folded));)
  }
  a.window_keys = window_keys, a.window_values = window_values, a.window = rows;
  a.group = p.group, a.scale = p.scale, a.outputs = p.outputs, a.route = p.route;
  a.scratch = reinterpret_cast<float*>(base + w.parts);
  a.scores_scratch = reinterpret_cast<float*>(base + w.scores);
  a.splits = std::min(w.splits, attention_splits(regions, n0, w.multiprocessors));
  return l.inner ? attention_inner(a, stream) : attention_outer(a, stream);
}

}  // namespace kvq::gpu
