#pragma once
// CLI flags for the cache spec: --preset plus one flag per spec key, named after
// the key (k.bits -> --k-bits, key_norm -> --key-norm), applied over the preset.
#include <map>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "core/spec.h"

namespace kvq::app {

class SpecFlags {
 public:
  // allow_list: --preset takes a comma-separated list.
  void add_to(CLI::App& command, bool allow_list);
  // The specs, each preset with the overriding flags applied and validated.
  std::vector<CacheSpec> resolve() const;

 private:
  std::string presets_ = "innerq_hybrid";
  std::map<std::string, std::string> overrides_;  // spec key -> value text
};

}  // namespace kvq::app
