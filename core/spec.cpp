#include "core/spec.h"

#include <algorithm>
#include <functional>
#include <map>

#include "core/error.h"

namespace kvq {

const char* to_string(Mode mode) {
  switch (mode) {
    case Mode::none: return "none";
    case Mode::fp16: return "fp16";
    case Mode::sym: return "sym";
    case Mode::asym: return "asym";
    case Mode::hybrid: return "hybrid";
    case Mode::codebook: return "codebook";
  }
  return "?";
}
const char* to_string(GroupAxis axis) { return axis == GroupAxis::channel ? "channel" : "token"; }
const char* to_string(SymLevels levels) { return levels == SymLevels::signmag ? "signmag" : "twos"; }
const char* to_string(HybridAsymBits bits) { return bits == HybridAsymBits::b_minus_1 ? "b-1" : "b"; }
const char* to_string(MetaPrecision meta) { return meta == MetaPrecision::fp16 ? "fp16" : "fp32"; }
const char* to_string(Rotation rotation) {
  return rotation == Rotation::none ? "none" : rotation == Rotation::hadamard ? "hadamard" : "random";
}
const char* to_string(TokenScale scale) {
  return scale == TokenScale::none ? "none" : scale == TokenScale::head ? "head" : "omni";
}

namespace {

[[noreturn]] void bad_value(const std::string& key, const std::string& value, const std::string& expected) {
  fail("{}: got '{}', expected {}", key, value, expected);
}

int parse_int(const std::string& key, const std::string& value) {
  try {
    std::size_t used = 0;
    int parsed = std::stoi(value, &used);
    if (used == value.size()) return parsed;
  } catch (const std::exception&) {
  }
  bad_value(key, value, "an integer");
}

bool parse_bool(const std::string& key, const std::string& value) {
  if (value == "true" || value == "on" || value == "yes" || value == "1") return true;
  if (value == "false" || value == "off" || value == "no" || value == "0") return false;
  bad_value(key, value, "true or false");
}

template <typename Enum>
Enum parse_enum(const std::string& key, const std::string& value,
                const std::vector<std::pair<const char*, Enum>>& choices) {
  std::string expected;
  for (const auto& [name, e] : choices) {
    if (value == name) return e;
    expected += expected.empty() ? "one of " : ", ";
    expected += name;
  }
  bad_value(key, value, expected);
}

GroupAxis parse_axis(const std::string& key, const std::string& value, TensorKind kind) {
  // Inner grouping runs along the reduction axis of the product that reads the tensor:
  // channels for q.K^T, tokens for p.V (ALGORITHMS.md, "Why grouping direction matters").
  if (value == "inner") return kind == TensorKind::key ? GroupAxis::channel : GroupAxis::token;
  if (value == "outer") return kind == TensorKind::key ? GroupAxis::token : GroupAxis::channel;
  return parse_enum<GroupAxis>(key, value, {{"channel", GroupAxis::channel}, {"token", GroupAxis::token}});
}

using Setter = std::function<void(CacheSpec&, const std::string&, const std::string&)>;
using Getter = std::function<std::string(const CacheSpec&)>;
struct Field {
  std::string key;
  Getter get;
  Setter set;
};

void add_tensor_fields(std::vector<Field>& fields, const std::string& prefix, TensorSpec CacheSpec::*member,
                       TensorKind kind) {
  fields.push_back({prefix + "mode", [=](const CacheSpec& s) { return std::string(to_string((s.*member).mode)); },
                    [=](CacheSpec& s, const std::string& k, const std::string& v) {
                      (s.*member).mode = parse_enum<Mode>(k, v,
                                                          {{"none", Mode::none},
                                                           {"fp16", Mode::fp16},
                                                           {"sym", Mode::sym},
                                                           {"asym", Mode::asym},
                                                           {"hybrid", Mode::hybrid},
                                                           {"codebook", Mode::codebook}});
                    }});
  fields.push_back({prefix + "bits", [=](const CacheSpec& s) { return std::to_string((s.*member).bits); },
                    [=](CacheSpec& s, const std::string& k, const std::string& v) {
                      (s.*member).bits = parse_int(k, v);
                    }});
  fields.push_back({prefix + "group_axis",
                    [=](const CacheSpec& s) { return std::string(to_string((s.*member).group_axis)); },
                    [=](CacheSpec& s, const std::string& k, const std::string& v) {
                      (s.*member).group_axis = parse_axis(k, v, kind);
                    }});
  fields.push_back({prefix + "group_size", [=](const CacheSpec& s) { return std::to_string((s.*member).group_size); },
                    [=](CacheSpec& s, const std::string& k, const std::string& v) {
                      (s.*member).group_size = parse_int(k, v);
                    }});
  fields.push_back({prefix + "sym_levels",
                    [=](const CacheSpec& s) { return std::string(to_string((s.*member).sym_levels)); },
                    [=](CacheSpec& s, const std::string& k, const std::string& v) {
                      (s.*member).sym_levels =
                          parse_enum<SymLevels>(k, v, {{"signmag", SymLevels::signmag}, {"twos", SymLevels::twos}});
                    }});
  fields.push_back({prefix + "hybrid_asym_bits",
                    [=](const CacheSpec& s) { return std::string(to_string((s.*member).hybrid_asym_bits)); },
                    [=](CacheSpec& s, const std::string& k, const std::string& v) {
                      (s.*member).hybrid_asym_bits = parse_enum<HybridAsymBits>(
                          k, v, {{"b-1", HybridAsymBits::b_minus_1}, {"b", HybridAsymBits::b}});
                    }});
  fields.push_back({prefix + "meta", [=](const CacheSpec& s) { return std::string(to_string((s.*member).meta)); },
                    [=](CacheSpec& s, const std::string& k, const std::string& v) {
                      (s.*member).meta =
                          parse_enum<MetaPrecision>(k, v, {{"fp16", MetaPrecision::fp16}, {"fp32", MetaPrecision::fp32}});
                    }});
  fields.push_back({prefix + "flush", [=](const CacheSpec& s) { return std::to_string((s.*member).flush); },
                    [=](CacheSpec& s, const std::string& k, const std::string& v) {
                      (s.*member).flush = parse_int(k, v);
                    }});
  fields.push_back({prefix + "rotation",
                    [=](const CacheSpec& s) { return std::string(to_string((s.*member).rotation)); },
                    [=](CacheSpec& s, const std::string& k, const std::string& v) {
                      (s.*member).rotation = parse_enum<Rotation>(
                          k, v, {{"none", Rotation::none}, {"hadamard", Rotation::hadamard}, {"random", Rotation::random}});
                    }});
  fields.push_back({prefix + "token_scale",
                    [=](const CacheSpec& s) { return std::string(to_string((s.*member).token_scale)); },
                    [=](CacheSpec& s, const std::string& k, const std::string& v) {
                      (s.*member).token_scale = parse_enum<TokenScale>(
                          k, v, {{"none", TokenScale::none}, {"head", TokenScale::head}, {"omni", TokenScale::omni}});
                    }});
}

const std::vector<Field>& fields() {
  static const std::vector<Field> all = [] {
    std::vector<Field> f;
    add_tensor_fields(f, "k.", &CacheSpec::k, TensorKind::key);
    add_tensor_fields(f, "v.", &CacheSpec::v, TensorKind::value);
    f.push_back({"sink", [](const CacheSpec& s) { return std::to_string(s.sink); },
                 [](CacheSpec& s, const std::string& k, const std::string& v) { s.sink = parse_int(k, v); }});
    f.push_back({"recent", [](const CacheSpec& s) { return std::to_string(s.recent); },
                 [](CacheSpec& s, const std::string& k, const std::string& v) { s.recent = parse_int(k, v); }});
    f.push_back({"key_norm", [](const CacheSpec& s) { return std::string(s.key_norm ? "true" : "false"); },
                 [](CacheSpec& s, const std::string& k, const std::string& v) { s.key_norm = parse_bool(k, v); }});
    f.push_back({"rotation_seed", [](const CacheSpec& s) { return std::to_string(s.rotation_seed); },
                 [](CacheSpec& s, const std::string& k, const std::string& v) { s.rotation_seed = parse_int(k, v); }});
    return f;
  }();
  return all;
}

TensorSpec quantized(Mode mode, int bits, GroupAxis axis, int flush) {
  TensorSpec t;
  t.mode = mode;
  t.bits = bits;
  t.group_axis = axis;
  t.group_size = 32;
  t.flush = flush;
  return t;
}

TensorSpec plain(Mode mode) {
  TensorSpec t;
  t.mode = mode;
  return t;
}

struct PresetEntry {
  CacheSpec spec;
  std::string source;
};

const std::map<std::string, PresetEntry>& presets() {
  static const std::map<std::string, PresetEntry> all = [] {
    std::map<std::string, PresetEntry> p;
    auto make = [&](const std::string& name, TensorSpec k, TensorSpec v, int sink, int recent, bool key_norm,
                    std::string source) {
      CacheSpec s;
      s.preset = name;
      s.k = k;
      s.v = v;
      s.sink = sink;
      s.recent = recent;
      s.key_norm = key_norm;
      p[name] = {s, std::move(source)};
    };
    const auto C = GroupAxis::channel;
    const auto T = GroupAxis::token;
    make("none", plain(Mode::none), plain(Mode::none), 0, 0, false, "no quantization: exact fp32 reference");
    make("fp16", plain(Mode::fp16), plain(Mode::fp16), 0, 0, false, "fp16 cache (InnerQ scripts' baseline)");
    make("kivi", quantized(Mode::asym, 2, T, 32), quantized(Mode::asym, 2, C, 1), 0, 128, false,
         "KIVI-2 as run by the InnerQ scripts: K per channel, V per token, R=128, flush 32/1");
    make("kivi_sink", quantized(Mode::asym, 2, T, 32), quantized(Mode::asym, 2, C, 1), 32, 96, false,
         "KIVI-2 with InnerQ's windows (InnerQ scripts): S=32, R=96");
    make("innerq_base", quantized(Mode::sym, 3, C, 1), quantized(Mode::sym, 3, T, 32), 32, 96, true,
         "InnerQ paper/scripts: K 3b sym per token, V 3b sym per channel, S=32, R=96, key norm");
    make("innerq_small", quantized(Mode::sym, 3, C, 1), quantized(Mode::sym, 2, T, 32), 32, 96, true,
         "InnerQ paper/scripts: as innerq_base with 2-bit values");
    make("innerq_hybrid", quantized(Mode::sym, 3, C, 1), quantized(Mode::hybrid, 2, T, 32), 32, 96, true,
         "InnerQ paper/scripts: 2-bit hybrid values (sym 2b vs asym 1b per group)");
    make("per_token", quantized(Mode::asym, 2, C, 1), quantized(Mode::asym, 2, C, 1), 0, 128, false,
         "per-token 2-bit asym for both K and V (the KIVI paper's naive baseline), R=128");
    make("q8_0", quantized(Mode::sym, 8, C, 1), quantized(Mode::sym, 8, C, 1), 0, 0, false,
         "llama.cpp q8_0 cache: blocks of 32 along head_dim, d = amax/127");
    make("q4_0", [&] { auto t = quantized(Mode::sym, 4, C, 1); t.sym_levels = SymLevels::twos; return t; }(),
         [&] { auto t = quantized(Mode::sym, 4, C, 1); t.sym_levels = SymLevels::twos; return t; }(), 0, 0, false,
         "llama.cpp q4_0 cache, as 4-bit two's-complement levels, d = amax/8 (llama.cpp maps the signed max to -8)");
    make("q4_1", quantized(Mode::asym, 4, C, 1), quantized(Mode::asym, 4, C, 1), 0, 0, false,
         "llama.cpp q4_1 cache: d = (max-min)/15, m = min, blocks of 32 along head_dim");
    // The rotation family (ALGORITHMS.md, "OScaR" and "Other peers").
    auto rotated = [](TensorSpec t, Rotation r, TokenScale scale) {
      t.rotation = r;
      t.token_scale = scale;
      return t;
    };
    make("oscar", rotated(quantized(Mode::asym, 2, T, 32), Rotation::hadamard, TokenScale::omni),
         quantized(Mode::asym, 2, C, 1), 0, 128, false,
         "OScaR: Hadamard-rotated keys divided by the omni-token norm, K 2b asym per channel, V 2b asym per token, "
         "R=128");
    {
      CacheSpec k = p.at("kivi").spec;
      make("kivi_hadamard", rotated(k.k, Rotation::hadamard, TokenScale::none), k.v, k.sink, k.recent, k.key_norm,
           "KIVI-2 with Hadamard-rotated keys (the rotation alone, no token scaling)");
      CacheSpec i = p.at("innerq_hybrid").spec;
      make("innerq_hadamard", rotated(i.k, Rotation::hadamard, TokenScale::none), i.v, i.sink, i.recent, i.key_norm,
           "InnerQ hybrid with Hadamard-rotated keys");
    }
    make("turbo3", rotated(quantized(Mode::codebook, 3, C, 1), Rotation::random, TokenScale::head),
         rotated(quantized(Mode::codebook, 3, C, 1), Rotation::random, TokenScale::head), 0, 0, false,
         "TurboQuant-style: random rotation, 3-bit Lloyd-Max codebook per coordinate, fp32 norm per token");
    return p;
  }();
  return all;
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

void validate_tensor(const TensorSpec& t, const std::string& prefix, int head_dim) {
  if (head_dim > 0 && t.rotation != Rotation::none && (head_dim & (head_dim - 1)) != 0) {
    fail("{}rotation: {} needs head_dim a power of two, got {}", prefix, to_string(t.rotation), head_dim);
  }
  if (t.mode == Mode::codebook) {
    if (t.bits != 2 && t.bits != 3 && t.bits != 4) fail("{}bits: got {}, expected 2, 3 or 4 for codebook mode", prefix, t.bits);
    if (t.token_scale == TokenScale::none) {
      fail("{}token_scale: codebook mode needs head or omni (its levels assume unit-RMS coordinates)", prefix);
    }
    if (t.group_axis != GroupAxis::channel) {
      fail("{}group_axis: codebook codes are stored per token, expected channel, got token", prefix);
    }
  }
  if (!t.quantized()) return;
  if (t.bits != 2 && t.bits != 3 && t.bits != 4 && t.bits != 8) {
    fail("{}bits: got {}, expected one of 2, 3, 4, 8", prefix, t.bits);
  }
  if (t.group_size != 16 && t.group_size != 32 && t.group_size != 64 && t.group_size != 128) {
    fail("{}group_size: got {}, expected one of 16, 32, 64, 128", prefix, t.group_size);
  }
  if (t.flush < 1) fail("{}flush: got {}, expected a positive number of tokens", prefix, t.flush);
  if (t.group_axis == GroupAxis::token && t.flush % t.group_size != 0) {
    // A group along tokens must see all G tokens; flushing fewer would be near-lossless and flatter the method.
    fail("{}flush: got {}, expected a multiple of {}group_size ({}) for token-axis groups", prefix, t.flush, prefix,
         t.group_size);
  }
  if (head_dim > 0 && t.group_axis == GroupAxis::channel && head_dim % t.group_size != 0) {
    fail("{}group_size: {} does not divide head_dim {} (channel-axis groups)", prefix, t.group_size, head_dim);
  }
  if (head_dim > 0 && head_dim % 32 != 0) {
    fail("head_dim: got {}, expected a multiple of 32 for quantized tensors (codes are packed 32 at a time)", head_dim);
  }
}

}  // namespace

void CacheSpec::validate(int head_dim) const {
  validate_tensor(k, "k.", head_dim);
  validate_tensor(v, "v.", head_dim);
  if (sink < 0) fail("sink: got {}, expected >= 0", sink);
  if (recent < 0) fail("recent: got {}, expected >= 0", recent);
}

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = {
      "none",      "fp16", "kivi", "kivi_sink", "innerq_base", "innerq_small",  "innerq_hybrid",   "per_token",
      "q8_0",      "q4_0", "q4_1", "oscar",     "kivi_hadamard", "innerq_hadamard", "turbo3"};
  return names;
}

CacheSpec preset(const std::string& name) {
  auto it = presets().find(name);
  if (it == presets().end()) {
    std::string valid;
    for (const auto& n : preset_names()) valid += (valid.empty() ? "" : ", ") + n;
    std::string near = closest_key(name, preset_names());
    fail("preset: unknown '{}'{}; expected one of {}", name, near.empty() ? "" : " (did you mean '" + near + "'?)",
         valid);
  }
  return it->second.spec;
}

std::string preset_source(const std::string& name) {
  auto it = presets().find(name);
  return it == presets().end() ? "" : it->second.source;
}

std::vector<std::pair<std::string, std::string>> spec_fields(const CacheSpec& spec) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& f : fields()) out.emplace_back(f.key, f.get(spec));
  return out;
}

const std::vector<std::string>& spec_keys() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> k;
    for (const auto& f : fields()) k.push_back(f.key);
    k.push_back("bits");
    k.push_back("group_size");
    k.push_back("preset");
    return k;
  }();
  return keys;
}

std::string closest_key(const std::string& key, const std::vector<std::string>& valid) {
  // A key that begins a valid one (a truncated name) suggests the shortest such; otherwise the
  // nearest by edit distance, if it is plausibly a typo.
  std::string best;
  for (const auto& candidate : valid)
    if (!key.empty() && candidate.rfind(key, 0) == 0 && (best.empty() || candidate.size() < best.size())) best = candidate;
  if (!best.empty()) return best;
  std::size_t best_distance = 0;
  for (const auto& candidate : valid) {
    std::size_t d = edit_distance(key, candidate);
    if (best.empty() || d < best_distance) {
      best = candidate;
      best_distance = d;
    }
  }
  return best_distance <= std::max<std::size_t>(2, key.size() / 3) ? best : "";
}

void set_field(CacheSpec& spec, const std::string& key, const std::string& value) {
  if (key == "preset") {
    spec = preset(value);
    return;
  }
  if (key == "bits" || key == "group_size") {
    set_field(spec, "k." + key, value);
    set_field(spec, "v." + key, value);
    return;
  }
  for (const auto& f : fields()) {
    if (f.key == key) {
      f.set(spec, key, value);
      return;
    }
  }
  std::string near = closest_key(key, spec_keys());
  fail("unknown spec key '{}'{}", key, near.empty() ? "" : " (did you mean '" + near + "'?)");
}

std::string label(const CacheSpec& spec) {
  if (presets().count(spec.preset) && describe(preset(spec.preset)) == describe(spec)) return spec.preset;
  return spec.preset + "+";
}

std::string describe(const CacheSpec& spec) {
  std::string out;
  for (const auto& [key, value] : spec_fields(spec)) {
    if (!out.empty()) out += ' ';
    out += key + '=' + value;
  }
  return out;
}

std::size_t storage_bytes(const TensorSpec& spec, int head_dim, const StorageCounts& counts) {
  const std::size_t d = static_cast<std::size_t>(head_dim);
  // fp16 normalization factor per channel, fp32 scale per token.
  const std::size_t norm = (counts.norm_factor ? d * 2 : 0) + static_cast<std::size_t>(counts.scaled_tokens) * 4;
  if (spec.mode == Mode::none) return counts.dense_tokens * d * 4 + norm;
  if (spec.mode == Mode::fp16) return counts.dense_tokens * d * 2 + norm;
  const std::size_t Q = static_cast<std::size_t>(counts.quantized_tokens);
  const std::size_t G = static_cast<std::size_t>(spec.group_size);
  const std::size_t b = static_cast<std::size_t>(spec.bits);
  const std::size_t meta = spec.meta == MetaPrecision::fp16 ? 2 : 4;
  const std::size_t tiles = (Q + 31) / 32;
  const std::size_t groups = Q * d / G;
  std::size_t bytes = static_cast<std::size_t>(counts.window_tokens) * d * 2 + norm;
  bytes += spec.group_axis == GroupAxis::channel ? Q * (d / 32) * b * 4 : tiles * d * b * 4;  // codes
  if (spec.mode == Mode::codebook) return bytes;                                              // no group metadata
  bytes += groups * meta;                                                                     // scales
  if (spec.mode == Mode::asym) bytes += groups * meta;                                        // zero points
  if (spec.mode == Mode::hybrid) {
    bytes += counts.asym_groups * meta;                                                // compact zero points
    bytes += (spec.group_axis == GroupAxis::channel ? tiles : Q / G) * 4;               // zero_base
  }
  return bytes;
}

}  // namespace kvq
