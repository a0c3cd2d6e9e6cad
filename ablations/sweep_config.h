#pragma once
// Sweep configuration files (YAML; docs/CONFIG.md documents every key).
// A config names the input dumps, a base spec, named ablations (each a cartesian
// product of spec-key axes and/or an explicit list of overrides), include/exclude
// rules, metrics, layers, heads, query positions, backend, output folder and an
// optional end-to-end perplexity run. Errors name the file, the line, the key and
// what was expected, and suggest the closest valid key.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/spec.h"
#include "data/synth.h"

namespace kvq::ablations {

// One resolved configuration to evaluate, with the ablations it belongs to.
struct SweepEntry {
  CacheSpec spec;
  std::vector<std::pair<std::string, std::string>> overrides;  // what the ablation set, in order
  std::vector<std::string> ablations;
};

struct PplConfig {
  bool enabled = false;
  std::string model;  // "" : the default cached SmolLM2 model
  std::string text;   // "" : /usr/share/common-licenses/GPL-3
  int tokens = 1024;
  int prefill = -1;   // -1: half
};

struct SweepConfig {
  std::string path;  // the file it was read from
  std::string text;  // its full text, for the manifest
  std::string name;
  std::vector<std::string> inputs;  // dump paths
  std::map<std::string, data::SynthConfig> synth_inputs;  // inputs the sweep generates when missing
  std::vector<SweepEntry> entries;  // unique specs, in first-appearance order
  std::vector<std::string> metrics; // result columns to keep (all when empty)
  std::vector<int> layers;          // empty: all
  std::vector<int> heads;           // kv heads; empty: all
  int prefill = -1;                 // as kvq eval
  int queries = 64;
  std::string backend = "cpu";
  std::string output;
  std::uint64_t seed = 0;           // recorded; the CPU evaluation is deterministic
  PplConfig ppl;
};

// The path the keyword `default` stands for in `inputs`: the real SmolLM2 dump the main job makes.
inline constexpr const char* kDefaultInput = "results/smollm2_gpl3_1024.h5";

// Reads and expands a config. Throws kvq::Error "FILE:LINE: ..." for any mistake.
SweepConfig load_sweep_config(const std::string& path);
// Same, from text (tests); `path` is used in messages.
SweepConfig parse_sweep_config(const std::string& text, const std::string& path);

}  // namespace kvq::ablations
