#pragma once
// One tensor (K or V) of one (layer, kv head) as a streaming cache:
//   [ sink: first S tokens, fp16 | quantized region | recent: fp16 ]
// Prefill P tokens, then append one token at a time (docs/SPEC.md, "Windows"):
//  - prefill: after the sink, keep min(R, rest) tokens recent, then shrink the recent
//    window until the quantized count is a multiple of F (as InnerQ's cache does);
//  - decode: a new token enters the recent buffer; when it holds R + F tokens, the
//    oldest F are quantized. Token-axis groups only ever see whole groups (F % G == 0).
// Key normalization (keys only): f_c = fp16(sqrt(max_t |K[t,c]|)) over the first batch
// that gets quantized, then frozen; quantized keys are K / f, and products fold f into
// the query. Modes none and fp16 keep every token densely (exact fp32 / fp16); with
// mode none, key normalization applies to the whole prefill (a check that folding f
// into q changes no score beyond rounding).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "core/spec.h"
#include "cpu_ref/packed_region.h"

namespace kvq::cpu {

class TensorCache {
 public:
  // Fixed token blocks for products: partial results are combined in block order, so the
  // result is the same whatever the number of OpenMP threads.
  static constexpr int kBlockTokens = 1024;
  static_assert(kBlockTokens % PackedRegion::kRangeAlign == 0, "product blocks must start where packed ranges may");

  TensorCache(const TensorSpec& spec, int head_dim, int sink, int recent, bool key_norm);

  void prefill(const float* rows, int count);  // only on an empty cache
  void append(const float* row);

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

 private:
  // rows / f, computing and freezing f on the first call when key normalization is on.
  std::vector<float> normalized(const float* rows, int count);
  void quantize_rows(const float* rows, int count);
  void store_dense(const float* rows, int count);
  void push_window(std::vector<std::uint16_t>& window, const float* row);

  TensorSpec spec_;
  int d_;
  int sink_;
  int recent_;
  bool key_norm_;
  int size_ = 0;
  // Dense storage for modes none (fp32) and fp16.
  std::vector<float> dense32_;
  std::vector<std::uint16_t> dense16_;
  // Windowed storage for quantized modes.
  std::vector<std::uint16_t> sink_rows_;
  int sink_count_ = 0;
  std::optional<PackedRegion> region_;
  std::vector<std::uint16_t> recent_rows_;
  int recent_count_ = 0;
  std::vector<std::uint16_t> norm_bits_;
  std::vector<float> norm_;
};

}  // namespace kvq::cpu
