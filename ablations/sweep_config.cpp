#include "ablations/sweep_config.h"

#include <set>

#include "ablations/yaml_reader.h"

#include "core/error.h"

namespace kvq::ablations {
namespace {

// Applies overrides: preset first, then the bits/group_size shorthands, then the rest in order.
CacheSpec apply_overrides(const CacheSpec& base, const std::vector<std::pair<std::string, std::string>>& overrides) {
  CacheSpec spec = base;
  for (const auto& [k, v] : overrides)
    if (k == "preset") set_field(spec, k, v);
  for (const auto& [k, v] : overrides)
    if (k == "bits" || k == "group_size") set_field(spec, k, v);
  for (const auto& [k, v] : overrides)
    if (k != "preset" && k != "bits" && k != "group_size") set_field(spec, k, v);
  return spec;
}

bool matches(const std::vector<std::pair<std::string, std::string>>& rule, const CacheSpec& spec) {
  const auto fields = spec_fields(spec);
  for (const auto& [key, value] : rule) {
    if (key == "preset") {
      if (spec.preset != value) return false;
      continue;
    }
    CacheSpec probe = spec;
    set_field(probe, key, value);  // normalizes aliases (inner/outer, on/off)
    if (describe(probe) != describe(spec)) return false;
  }
  return true;
}

}  // namespace

SweepConfig parse_sweep_config(const std::string& text, const std::string& path) {
  YamlReader r(path);
  const YAML::Node root = r.load(text);
  static const std::vector<std::string> top = {"name",    "inputs",  "base",    "ablations", "include", "exclude",
                                               "metrics", "layers",  "heads",   "prefill",   "queries", "backend",
                                               "output",  "seed",    "ppl"};
  r.known_keys(root, top, "the config");
  SweepConfig c;
  c.path = path;
  c.text = text;
  c.name = root["name"] ? r.scalar<std::string>(root["name"], "name", "a string") : "sweep";
  c.output = root["output"] ? r.scalar<std::string>(root["output"], "output", "a folder") : "results/" + c.name;
  const YAML::Node inputs = root["inputs"];
  if (!inputs) r.error(root, "missing 'inputs' (dump paths, 'default' for the real SmolLM2 dump, or {synth: {...}})");
  if (!inputs.IsSequence()) r.error(inputs, "inputs: expected a list");
  for (const auto& input : inputs) {
    if (input.IsScalar()) {
      c.inputs.push_back(input.Scalar() == "default" ? kDefaultInput : input.Scalar());
      continue;
    }
    // {synth: {layers: 2, ...}}: a synthetic dump the sweep writes into its output folder.
    r.known_keys(input, {"synth"}, "an input");
    const YAML::Node s = input["synth"];
    r.known_keys(s, {"layers", "heads", "kv_heads", "head_dim", "seq_len", "seed", "outliers", "sink", "rope",
                     "token_norm_sigma"}, "synth");
    data::SynthConfig sc;
    auto get = [&](const char* key, auto& field, const char* expected) {
      if (s[key]) field = r.scalar<std::decay_t<decltype(field)>>(s[key], std::string("synth.") + key, expected);
    };
    get("layers", sc.num_layers, "an integer");
    get("heads", sc.num_heads, "an integer");
    get("kv_heads", sc.num_kv_heads, "an integer");
    get("head_dim", sc.head_dim, "an integer");
    get("seq_len", sc.seq_len, "an integer");
    get("seed", sc.seed, "an integer");
    get("outliers", sc.outlier_channels, "an integer");
    get("sink", sc.sink, "true or false");
    get("rope", sc.rope, "true or false");
    get("token_norm_sigma", sc.token_norm_sigma, "a number");
    const std::string path = fmt::format("{}/synthetic_l{}_h{}_kv{}_d{}_t{}_s{}.h5", c.output, sc.num_layers, sc.num_heads,
                                         sc.num_kv_heads, sc.head_dim, sc.seq_len, sc.seed);
    c.synth_inputs[path] = sc;
    c.inputs.push_back(path);
  }
  if (c.inputs.empty()) r.error(inputs, "inputs: expected at least one dump");

  CacheSpec base = preset("innerq_hybrid");
  if (const auto b = root["base"]) {
    if (b.IsScalar()) {
      try {
        base = preset(b.Scalar());
      } catch (const Error& e) {
        r.error(b, e.what());
      }
    } else {
      base = apply_overrides(base, r.overrides(b, "base"));
    }
  }
  if (const auto m = root["metrics"]) c.metrics = r.string_list(m, "metrics");
  if (const auto l = root["layers"]) c.layers = r.int_list(l, "layers");
  if (const auto h = root["heads"]) c.heads = r.int_list(h, "heads");
  if (const auto p = root["prefill"]) c.prefill = r.scalar<int>(p, "prefill", "an integer");
  if (const auto q = root["queries"]) c.queries = r.scalar<int>(q, "queries", "an integer");
  if (const auto s = root["seed"]) c.seed = r.scalar<std::uint64_t>(s, "seed", "a non-negative integer");
  if (const auto b = root["backend"]) {
    c.backend = r.scalar<std::string>(b, "backend", "cpu or cuda");
    if (c.backend != "cpu" && c.backend != "cuda") r.error(b, "backend: got '" + c.backend + "', expected cpu or cuda");
    if (c.backend == "cuda") r.error(b, "backend: cuda is not available for sweeps (their metrics run on the CPU reference; kvq bench --backend cuda times the GPU kernels); use cpu");
  }
  if (const auto p = root["ppl"]) {
    r.known_keys(p, {"enabled", "model", "text", "tokens", "prefill"}, "ppl");
    c.ppl.enabled = p["enabled"] ? r.scalar<bool>(p["enabled"], "ppl.enabled", "true or false") : true;
    if (p["model"]) c.ppl.model = r.scalar<std::string>(p["model"], "ppl.model", "a path");
    if (p["text"]) c.ppl.text = r.scalar<std::string>(p["text"], "ppl.text", "a path");
    if (p["tokens"]) c.ppl.tokens = r.scalar<int>(p["tokens"], "ppl.tokens", "an integer");
    if (p["prefill"]) c.ppl.prefill = r.scalar<int>(p["prefill"], "ppl.prefill", "an integer");
  }

  std::vector<std::vector<std::pair<std::string, std::string>>> excludes;
  if (const auto e = root["exclude"]) {
    if (!e.IsSequence()) r.error(e, "exclude: expected a list of spec-key mappings");
    for (const auto& rule : e) excludes.push_back(r.overrides(rule, "exclude"));
  }
  std::map<std::string, std::size_t> seen;  // describe(spec) -> entry index
  auto add = [&](const std::vector<std::pair<std::string, std::string>>& overrides, const std::string& ablation,
                 const YAML::Node& at) {
    CacheSpec spec;
    try {
      spec = apply_overrides(base, overrides);
    } catch (const Error& e) {
      r.error(at, e.what());
    }
    for (const auto& rule : excludes)
      if (matches(rule, spec)) return;
    try {
      spec.validate();
    } catch (const Error& e) {
      std::string what;
      for (const auto& [k, v] : overrides) what += (what.empty() ? "" : ", ") + k + "=" + v;
      r.error(at, fmt::format("ablation '{}', config {{{}}}: {} (drop it with 'exclude')", ablation, what, e.what()));
    }
    const std::string key = describe(spec) + " preset=" + spec.preset;
    auto it = seen.find(key);
    if (it == seen.end()) {
      seen[key] = c.entries.size();
      c.entries.push_back({spec, overrides, {ablation}});
    } else if (std::find(c.entries[it->second].ablations.begin(), c.entries[it->second].ablations.end(), ablation) ==
               c.entries[it->second].ablations.end()) {
      c.entries[it->second].ablations.push_back(ablation);
    }
  };

  const auto ablations = root["ablations"];
  if (!ablations && !root["include"]) r.error(root, "missing 'ablations' (or 'include'): nothing to sweep");
  if (ablations) {
    if (!ablations.IsMap()) r.error(ablations, "ablations: expected a mapping of name -> {axes, configs}");
    for (const auto& a : ablations) {
      const std::string name = a.first.as<std::string>();
      const YAML::Node body = a.second;
      r.known_keys(body, {"axes", "configs"}, "ablation '" + name + "'");
      if (const auto axes = body["axes"]) {
        if (!axes.IsMap()) r.error(axes, "axes: expected a mapping of spec key -> list of values");
        r.known_keys(axes, spec_keys(), "axes of ablation '" + name + "'");
        // Cartesian product, the first axis varying slowest.
        std::vector<std::vector<std::pair<std::string, std::string>>> grid = {{}};
        for (const auto& axis : axes) {
          const std::string key = axis.first.as<std::string>();
          const auto values = r.string_list(axis.second, key);
          if (values.empty()) r.error(axis.second, key + ": expected at least one value");
          std::vector<std::vector<std::pair<std::string, std::string>>> next;
          for (const auto& partial : grid)
            for (const auto& v : values) {
              auto row = partial;
              row.emplace_back(key, v);
              next.push_back(row);
            }
          grid = next;
        }
        for (const auto& row : grid) add(row, name, axes);
      }
      if (const auto configs = body["configs"]) {
        if (!configs.IsSequence()) r.error(configs, "configs: expected a list of spec-key mappings");
        for (const auto& one : configs) add(r.overrides(one, "configs of ablation '" + name + "'"), name, one);
      }
    }
  }
  if (const auto inc = root["include"]) {
    if (!inc.IsSequence()) r.error(inc, "include: expected a list of spec-key mappings");
    for (const auto& one : inc) add(r.overrides(one, "include"), "include", one);
  }
  if (c.entries.empty()) r.error(root, "every configuration was excluded: nothing to sweep");
  return c;
}

SweepConfig load_sweep_config(const std::string& path) { return parse_sweep_config(read_config_file(path), path); }

}  // namespace kvq::ablations
