#pragma once
// The quantization spec: how one tensor (K or V) of a KV cache is stored, and
// the cache-level knobs (windows, key normalization). One key registry serves
// CLI flags (--k-bits), config files (k.bits) and result columns (k.bits), so
// a concept has one name everywhere. See docs/SPEC.md.
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace kvq {

// none: exact fp32, no rounding at all; fp16: stored as fp16, nothing else;
// sym/asym/hybrid: grouped integer codes (ALGORITHMS.md, "Quantizers");
// codebook: per-coordinate Lloyd-Max levels for a unit Gaussian, no per-group metadata
// (TurboQuant-style; needs a token scale so coordinates have unit RMS, core/codebook.h).
enum class Mode { none, fp16, sym, asym, hybrid, codebook };
// The axis a group of G consecutive values runs along.
enum class GroupAxis { channel, token };
// signmag: levels -(2^(b-1)-1)..(2^(b-1)-1), s = max|x|/(2^(b-1)-1) (InnerQ's Python reference);
// twos:    levels -2^(b-1)..2^(b-1)-1,        s = max|x|/2^(b-1)     (InnerQ's CUDA test).
enum class SymLevels { signmag, twos };
// Bits of hybrid's asymmetric arm: b-1 (Python reference, the code's sign bit is free) or b (CUDA test).
enum class HybridAsymBits { b_minus_1, b };
enum class MetaPrecision { fp16, fp32 };
// Orthogonal rotation along head_dim before quantization, applied to q alike (core/rotation.h):
// hadamard: H_d / sqrt(d); random: H_d / sqrt(d) times seeded random signs.
enum class Rotation { none, hadamard, random };
// Per-token scale before quantization, stored as fp32 per token: each token is divided by its
// RMS over its own head (head) or over all kv heads of its layer (omni, OScaR's omni-token norm).
enum class TokenScale { none, head, omni };
enum class TensorKind { key, value };

struct TensorSpec {
  Mode mode = Mode::none;
  int bits = 2;
  GroupAxis group_axis = GroupAxis::channel;
  int group_size = 32;
  SymLevels sym_levels = SymLevels::signmag;
  HybridAsymBits hybrid_asym_bits = HybridAsymBits::b_minus_1;
  MetaPrecision meta = MetaPrecision::fp16;
  // Tokens quantized at once when the recent window overflows (ALGORITHMS.md, "Windows").
  int flush = 1;
  Rotation rotation = Rotation::none;
  TokenScale token_scale = TokenScale::none;

  // Modes stored in a packed region (core/packed.h) behind fp16 windows.
  bool quantized() const {
    return mode == Mode::sym || mode == Mode::asym || mode == Mode::hybrid || mode == Mode::codebook;
  }
};

struct CacheSpec {
  std::string preset = "custom";  // the preset it started from, for reports
  TensorSpec k;
  TensorSpec v;
  int sink = 0;         // first S tokens of the sequence kept in fp16
  int recent = 0;       // latest R tokens kept in fp16
  bool key_norm = false;  // per-channel sqrt(max|K|) factor, folded into the query
  int rotation_seed = 0;  // seeds the random signs of rotation=random (K and V draw different signs)

  // Throws kvq::Error naming the key and the reason when the combination is invalid.
  // head_dim <= 0 skips the checks that need it.
  void validate(int head_dim = 0) const;
};

// Every preset name, in the order reports list them.
const std::vector<std::string>& preset_names();
// The preset's spec; throws kvq::Error (with the valid names) for an unknown one.
CacheSpec preset(const std::string& name);
// Where the preset comes from, one line (docs/SPEC.md has the long form).
std::string preset_source(const std::string& name);

// Every settable key with its current value as text, in a fixed order:
// "k.mode", "k.bits", ..., "v.flush", "sink", "recent", "key_norm".
std::vector<std::pair<std::string, std::string>> spec_fields(const CacheSpec& spec);
// All valid keys (spec_fields' keys plus the shorthands "bits", "group_size", "preset").
const std::vector<std::string>& spec_keys();
// Sets one key from text. "preset" replaces the whole spec; "bits" and "group_size" set K and V.
// Errors name the key and what was expected, and suggest the closest key for unknown ones.
void set_field(CacheSpec& spec, const std::string& key, const std::string& value);
// The closest valid key to an unknown one (edit distance), or "" if none is near.
std::string closest_key(const std::string& key, const std::vector<std::string>& valid);

// The preset name when the spec equals that preset, else "<preset>+" (a modified preset).
std::string label(const CacheSpec& spec);
// One-line canonical description, "key=value key=value ...".
std::string describe(const CacheSpec& spec);

// What a stored tensor holds, for storage accounting.
struct StorageCounts {
  int dense_tokens = 0;         // modes none / fp16: every token
  int window_tokens = 0;        // quantized modes: sink + recent tokens, fp16
  int quantized_tokens = 0;     // quantized modes: tokens in the packed region
  std::size_t asym_groups = 0;  // hybrid: groups that chose the asymmetric arm
  bool norm_factor = false;     // key normalization factor stored (fp16 per channel)
  int scaled_tokens = 0;        // tokens with a stored token scale (fp32 each)
};
// Exact bytes the core/packed.h layout takes for those counts: codes (whole 32-token tiles
// for token-axis groups), scales, zero points, hybrid's zero_base, fp16 windows, the norm
// factor, the token scales. cpu_ref allocates exactly this much (tested).
std::size_t storage_bytes(const TensorSpec& spec, int head_dim, const StorageCounts& counts);

const char* to_string(Mode mode);
const char* to_string(GroupAxis axis);
const char* to_string(SymLevels levels);
const char* to_string(HybridAsymBits bits);
const char* to_string(MetaPrecision meta);
const char* to_string(Rotation rotation);
const char* to_string(TokenScale scale);

}  // namespace kvq
