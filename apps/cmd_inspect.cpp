// kvq inspect: shapes, storage and the statistics that make a cache hard to quantize.
#include <cstdio>
#include <map>

#include "analysis/inspect.h"
#include "apps/commands.h"
#include "core/spec.h"

namespace kvq::app {

void add_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Validate a KV dump and print its shapes and statistics");
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  cmd->add_option("file", *path, "KV dump (HDF5)")->required();
  cmd->add_flag("--json", *json, "Print JSON instead of a table");
  // The key transform of the ->after columns, named as the spec keys are (docs/SPEC.md).
  auto transform = std::make_shared<std::map<std::string, std::string>>(std::map<std::string, std::string>{
      {"k.rotation", "hadamard"}, {"k.token_scale", "omni"}, {"rotation_seed", "0"}});
  cmd->add_option("--k-rotation", (*transform)["k.rotation"], "Key rotation for the ->after columns: none, hadamard, random")
      ->capture_default_str();
  cmd->add_option("--k-token-scale", (*transform)["k.token_scale"], "Key token scale for the ->after columns: none, head, omni")
      ->capture_default_str();
  cmd->add_option("--rotation-seed", (*transform)["rotation_seed"], "Seed of rotation=random's signs")->capture_default_str();
  cmd->callback([=] {
    data::DumpReader dump(*path);
    dump.check_finite();
    CacheSpec spec;
    for (const auto& [key, value] : *transform) set_field(spec, key, value);
    auto options = std::make_shared<analysis::InspectOptions>();
    options->rotation = spec.k.rotation;
    options->token_scale = spec.k.token_scale;
    options->rotation_seed = spec.rotation_seed;
    const auto stats = analysis::inspect_dump(dump, *options);
    if (*json) {
      std::printf("%s\n", analysis::inspect_json(dump, stats, *options).dump(2).c_str());
    } else {
      std::printf("%s", analysis::inspect_text(dump, stats, *options).c_str());
    }
  });
}

}  // namespace kvq::app
