// kvq eval: quantized-cache attention against the exact cache, per layer and overall.
#include <cstdio>
#include <cstdlib>

#include <unistd.h>

#include "ablations/runner.h"
#include "apps/commands.h"
#include "apps/spec_flags.h"
#include "core/atomic_file.h"
#include "core/provenance.h"

namespace kvq::app {

void add_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Prefill, decode token by token, and measure attention error per layer");
  auto in = std::make_shared<std::string>();
  auto flags = std::make_shared<SpecFlags>();
  auto options = std::make_shared<ablations::RunOptions>();
  auto json = std::make_shared<std::string>();
  auto csv = std::make_shared<std::string>();
  auto per_layer = std::make_shared<bool>(false);
  cmd->add_option("in", *in, "KV dump (needs queries for attention metrics)")->required();
  flags->add_to(*cmd, true);
  cmd->add_option("--prefill", options->prefill, "Tokens prefilled before decoding (default: all but the last 64)");
  cmd->add_option("--queries", options->queries, "Evaluate the last N decoded positions (default: all)");
  cmd->add_option("--layers", options->layers, "Layers to evaluate (default: all)")->delimiter(',');
  cmd->add_option("--json", *json, "Write records, summaries and provenance as JSON");
  cmd->add_option("--csv", *csv, "Write the tidy per-(layer, head) CSV (provenance in leading # lines)");
  cmd->add_flag("--per-layer", *per_layer, "Also print one line per layer");
  cmd->callback([=] {
    const std::vector<CacheSpec> specs = flags->resolve();
    data::DumpReader dump(*in);
    dump.check_finite();
    if (!dump.info().has_queries) {
      std::fprintf(stderr, "kvq: warning: %s has no 'queries' dataset; only reconstruction metrics are computed\n",
                   in->c_str());
    }
    ablations::RunOptions run = *options;
    run.progress = isatty(fileno(stderr)) && std::getenv("CI") == nullptr;
    const auto records = ablations::run_eval(dump, specs, run);

    Provenance provenance;
    provenance.command = command_line();
    for (const auto& s : specs) provenance.config += (provenance.config.empty() ? "" : "; ") + describe(s);
    provenance.input = *in;
    provenance.input_sha256 = sha256_file(*in);
    const nlohmann::json prov = provenance_json(provenance);
    if (!json->empty()) {
      nlohmann::json doc = analysis::results_json(records);
      doc["provenance"] = prov;
      write_file_atomically(*json, doc.dump(2) + "\n");
    }
    if (!csv->empty()) {
      std::string header;
      for (const auto& [key, value] : prov.items()) header += "# " + key + ": " + (value.is_string() ? value.get<std::string>() : value.dump()) + "\n";
      write_file_atomically(*csv, header + analysis::results_csv(records));
    }
    std::printf("%s", analysis::summary_text(records, *per_layer).c_str());
  });
}

}  // namespace kvq::app
