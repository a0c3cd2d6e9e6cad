#pragma once
// Reading YAML configs with errors that name the file, the line, the key and what was
// expected, and suggest the closest valid key. Shared by sweep and latency configs.
#include <string>
#include <vector>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "core/error.h"
#include "core/spec.h"

namespace kvq::ablations {

// The text of a config file; throws kvq::Error naming it when it cannot be read.
std::string read_config_file(const std::string& path);

class YamlReader {
 public:
  explicit YamlReader(std::string path) : path_(std::move(path)) {}

  // Parses text; a syntax error is "FILE:LINE: not valid YAML: ...".
  YAML::Node load(const std::string& text) const;

  [[noreturn]] void error(const YAML::Node& at, const std::string& message) const {
    const YAML::Mark m = at.Mark();
    if (m.line >= 0 && at.IsDefined()) fail("{}:{}: {}", path_, m.line + 1, message);
    fail("{}: {}", path_, message);
  }

  // Rejects keys of `map` outside `valid`, naming the closest valid one.
  void known_keys(const YAML::Node& map, const std::vector<std::string>& valid, const std::string& where) const {
    if (!map.IsMap()) error(map, where + ": expected a mapping");
    for (const auto& kv : map) {
      const std::string key = kv.first.as<std::string>();
      if (std::find(valid.begin(), valid.end(), key) != valid.end()) continue;
      const std::string near = closest_key(key, valid);
      error(kv.first, fmt::format("unknown key '{}' in {}{}", key, where, near.empty() ? "" : " (did you mean '" + near + "'?)"));
    }
  }

  // Any YAML value convertible to T (lists too); the error names the key and what was expected.
  template <typename T>
  T value(const YAML::Node& node, const std::string& key, const char* expected) const {
    try {
      return node.as<T>();
    } catch (const YAML::Exception&) {
      error(node, fmt::format("{}: expected {}", key, expected));
    }
  }

  template <typename T>
  T scalar(const YAML::Node& node, const std::string& key, const char* expected) const {
    if (!node.IsScalar()) error(node, fmt::format("{}: expected {}", key, expected));
    try {
      return node.as<T>();
    } catch (const YAML::Exception&) {
      error(node, fmt::format("{}: got '{}', expected {}", key, node.Scalar(), expected));
    }
  }

  std::vector<int> int_list(const YAML::Node& node, const std::string& key) const {
    if (node.IsScalar() && node.Scalar() == "all") return {};
    if (!node.IsSequence()) error(node, key + ": expected 'all' or a list of integers");
    std::vector<int> out;
    for (const auto& v : node) out.push_back(scalar<int>(v, key, "an integer"));
    return out;
  }

  std::vector<std::string> string_list(const YAML::Node& node, const std::string& key) const {
    if (node.IsScalar()) return {node.Scalar()};
    if (!node.IsSequence()) error(node, key + ": expected a list");
    std::vector<std::string> out;
    for (const auto& v : node) out.push_back(scalar<std::string>(v, key, "a string"));
    return out;
  }

  // A spec-override mapping, checked key by key (spec keys and their values).
  std::vector<std::pair<std::string, std::string>> overrides(const YAML::Node& map, const std::string& where) const {
    known_keys(map, spec_keys(), where);
    std::vector<std::pair<std::string, std::string>> out;
    CacheSpec probe = preset("innerq_hybrid");
    for (const auto& kv : map) {
      const std::string key = kv.first.as<std::string>();
      const std::string value = scalar<std::string>(kv.second, key, "a value");
      try {
        set_field(probe, key, value);  // value check only; the real application happens later
      } catch (const Error& e) {
        error(kv.second, e.what());
      }
      out.emplace_back(key, value);
    }
    return out;
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace kvq::ablations
