#include "apps/spec_flags.h"

#include <algorithm>

#include "core/error.h"

namespace kvq::app {

namespace {
std::string flag_for(const std::string& key) {
  std::string flag = "--" + key;
  std::replace(flag.begin(), flag.end(), '.', '-');
  std::replace(flag.begin() + 2, flag.end(), '_', '-');
  return flag;
}
}  // namespace

void SpecFlags::add_to(CLI::App& command, bool allow_list) {
  std::string names;
  for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
  command.add_option("--preset", presets_,
                     std::string(allow_list ? "Preset name(s), comma-separated: " : "Preset name: ") + names)
      ->capture_default_str();
  for (const auto& key : spec_keys()) {
    if (key == "preset") continue;
    command.add_option_function<std::string>(
        flag_for(key), [this, key](const std::string& value) { overrides_[key] = value; },
        "Override spec key '" + key + "' (docs/SPEC.md)");
  }
}

std::vector<CacheSpec> SpecFlags::resolve() const {
  std::vector<CacheSpec> specs;
  std::string::size_type start = 0;
  while (start <= presets_.size()) {
    const auto end = presets_.find(',', start);
    const std::string name = presets_.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!name.empty()) {
      CacheSpec spec = preset(name);
      // Shorthands first so that a specific key (k.bits) wins over its shorthand (bits).
      for (const char* shorthand : {"bits", "group_size"})
        if (overrides_.count(shorthand)) set_field(spec, shorthand, overrides_.at(shorthand));
      for (const auto& [key, value] : overrides_)
        if (key != "bits" && key != "group_size") set_field(spec, key, value);
      spec.validate();
      specs.push_back(spec);
    }
    if (end == std::string::npos) break;
    start = end + 1;
  }
  if (specs.empty()) fail("--preset: expected at least one preset name");
  return specs;
}

}  // namespace kvq::app
