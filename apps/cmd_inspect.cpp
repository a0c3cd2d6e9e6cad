// kvq inspect: shapes, storage and the statistics that make a cache hard to quantize.
#include <cstdio>

#include "analysis/inspect.h"
#include "apps/commands.h"

namespace kvq::app {

void add_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Validate a KV dump and print its shapes and statistics");
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  cmd->add_option("file", *path, "KV dump (HDF5)")->required();
  cmd->add_flag("--json", *json, "Print JSON instead of a table");
  cmd->callback([=] {
    data::DumpReader dump(*path);
    dump.check_finite();
    const auto stats = analysis::inspect_dump(dump);
    if (*json) {
      std::printf("%s\n", analysis::inspect_json(dump, stats).dump(2).c_str());
    } else {
      std::printf("%s", analysis::inspect_text(dump, stats).c_str());
    }
  });
}

}  // namespace kvq::app
