#pragma once
// One tensor (K or V) of one (layer, kv head) as a streaming cache:
//   [ sink: first S tokens, fp16 | quantized region | recent: fp16 ]
// Prefill P tokens, then append one token at a time (docs/SPEC.md, "Windows"):
//  - prefill: after the sink, keep min(R, rest) tokens recent, then shrink the recent
//    window until the quantized count is a multiple of F (as InnerQ's cache does);
//  - decode: a new token enters the recent buffer; when it holds R + F tokens, the
//    oldest F are quantized. Token-axis groups only ever see whole groups (F % G == 0).
// Before the quantizer (docs/SPEC.md, "Rotation and token scaling"), each stored row goes
// through x -> x / sigma_t (its token scale, fp32 per token, from the row as given) -> R x
// (the tensor's rotation) -> / f (key normalization); products rotate q alike and multiply
// sigma_t back, weighted sums multiply p_t by sigma_t and rotate the result back. Windows hold
// the rows as given.
// Key normalization (keys only): f_c = fp16(sqrt(max_t |K[t,c]|)) over the first batch
// that gets quantized, then frozen; quantized keys are K / f, and products fold f into
// the query. Modes none and fp16 keep every token densely (exact fp32 / fp16); with
// mode none, key normalization applies to the whole prefill (a check that folding f
// into q changes no score beyond rounding).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "core/rotation.h"
#include "core/spec.h"
#include "cpu_ref/packed_region.h"

namespace kvq::cpu {

class TensorCache {
 public:
  // Fixed token blocks for products: partial results are combined in block order, so the
  // result is the same whatever the number of OpenMP threads.
  static constexpr int kBlockTokens = 1024;
  static_assert(kBlockTokens % PackedRegion::kRangeAlign == 0, "product blocks must start where packed ranges may");

  // rotation_stream: the seed of rotation=random's signs (core/rotation.h, rotation_stream()).
  TensorCache(const TensorSpec& spec, int head_dim, int sink, int recent, bool key_norm,
              std::uint64_t rotation_stream = 0);

  // token_scale: with TokenScale::omni, the scale of each row (omni_token_scale over all kv heads);
  // ignored otherwise.
  void prefill(const float* rows, int count, const float* token_scale = nullptr);  // only on an empty cache
  void append(const float* row, float token_scale = 0.0f);

  int size() const { return size_; }
  int head_dim() const { return d_; }
  int sink_tokens() const { return sink_count_; }
  int quantized_tokens() const { return region_ ? region_->tokens() : 0; }
  int recent_tokens() const { return recent_count_; }

  // out[t] = sum_c q[c] * x^[t][c] for every token t < size() (key normalization folded into q).
  void dot_rows(const float* q, float* out) const;
  // out[c] = sum_t p[t] * x^[t][c], p has size() entries.
  void weighted_sum(const float* p, float* out) const;
  // out (size() x head_dim) = what attention sees, key normalization undone.
  void dequantize(float* out) const;

  // Bytes allocated for the stored tensor: windows, packed region, normalization factors.
  std::size_t bytes() const;
  double bits_per_element() const;

  const PackedRegion* region() const { return region_ ? &*region_ : nullptr; }
  // fp16 bit patterns of the key-normalization factor (empty until the first quantization).
  const std::vector<std::uint16_t>& norm_factor() const { return norm_bits_; }
  // Stored token scales, one per transformed row (dense rows or the packed region's tokens).
  const std::vector<float>& token_scales() const { return token_scale_; }
  const Rotator& rotator() const { return rotator_; }

 private:
  // R (x / sigma_t) / f for `count` rows, storing sigma_t, and computing and freezing f on the first
  // call when key normalization is on.
  std::vector<float> transformed(const float* rows, int count, const float* scales);
  void quantize_rows(const float* rows, int count, const float* scales);
  void store_dense(const float* rows, int count, const float* scales);
  void push_window(std::vector<std::uint16_t>& window, const float* row);
  // out[c] += R^T (f * acc)[c]: a weighted sum of transformed rows taken back to the input space.
  void add_untransformed(std::vector<float>& acc, float* out) const;

  TensorSpec spec_;
  int d_;
  int sink_;
  int recent_;
  bool key_norm_;
  Rotator rotator_;
  int size_ = 0;
  // Dense storage for modes none (fp32) and fp16.
  std::vector<float> dense32_;
  std::vector<std::uint16_t> dense16_;
  // Windowed storage for quantized modes.
  std::vector<std::uint16_t> sink_rows_;
  int sink_count_ = 0;
  std::optional<PackedRegion> region_;
  std::vector<std::uint16_t> recent_rows_;
  std::vector<float> recent_scales_;  // omni token scales of the recent rows, used when they are flushed
  int recent_count_ = 0;
  std::vector<float> token_scale_;
  std::vector<std::uint16_t> norm_bits_;
  std::vector<float> norm_;
};

// The cache of one tensor under a cache spec: the spec's windows and rotation seed, key
// normalization for keys only.
TensorCache make_cache(const CacheSpec& spec, TensorKind kind, int head_dim);

// What the quantizer of `spec` sees for `count` rows, before key normalization: each row divided by
// its token scale (omni: given in `omni`, else computed), then rotated. The scales go to `scales`
// when it is not null (appended, one per row; nothing when token_scale is none).
std::vector<float> scale_and_rotate(const TensorSpec& spec, const Rotator& rotator, const float* rows, int count,
                                    int head_dim, const float* omni, std::vector<float>* scales);

// Omni-token scales (OScaR): sigma_t = sqrt(sum over heads and channels of x^2 / (heads * head_dim)),
// over the fp16 values the caches hold, in double. heads[h] is head h's rows (count x head_dim).
std::vector<float> omni_token_scale(const std::vector<const float*>& heads, int count, int head_dim);

}  // namespace kvq::cpu
