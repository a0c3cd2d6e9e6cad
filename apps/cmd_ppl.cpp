// kvq ppl: end-to-end perplexity with the quantized cache in the loop.
#include <cstdio>
#include <cstdlib>

#include <unistd.h>

#include "analysis/perplexity.h"
#include "apps/commands.h"
#include "apps/model_input.h"
#include "apps/spec_flags.h"
#include "core/atomic_file.h"
#include "core/provenance.h"

namespace kvq::app {

void add_ppl(CLI::App& app) {
  auto* cmd = app.add_subcommand("ppl", "Perplexity of the model with each preset's quantized cache in the loop");
  auto input = std::make_shared<ModelInput>();
  auto flags = std::make_shared<SpecFlags>();
  auto options = std::make_shared<analysis::PplOptions>();
  auto json = std::make_shared<std::string>();
  input->add_to(*cmd);
  flags->add_to(*cmd, true);
  cmd->add_option("--prefill", options->prefill, "Tokens prefilled before decoding (default: half)");
  cmd->add_option("--json", *json, "Write the results and provenance as JSON");
  cmd->callback([=] {
    const auto specs = flags->resolve();
    const auto loaded = input->load();
    const bool progress = isatty(fileno(stderr)) && std::getenv("CI") == nullptr;
    const auto results = analysis::perplexity(*loaded.model, loaded.ids, specs, *options, progress);
    std::printf("%-16s %10s %10s %8s %10s  (%d tokens, %d scored)\n", "preset", "ppl", "delta", "top1", "kl",
                input->tokens, results.front().scored);
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : results) {
      std::printf("%-16s %10.4f %+10.4f %8.4f %10.3e\n", r.preset.c_str(), r.ppl, r.ppl_delta, r.top1, r.kl);
      rows.push_back({{"preset", r.preset}, {"spec", describe(r.spec)}, {"ppl", r.ppl}, {"ppl_delta", r.ppl_delta},
                      {"nll", r.nll}, {"top1", r.top1}, {"kl", r.kl}, {"scored", r.scored}});
    }
    if (!json->empty()) {
      Provenance provenance;
      provenance.command = command_line();
      for (const auto& s : specs) provenance.config += (provenance.config.empty() ? "" : "; ") + describe(s);
      provenance.input = input->model;
      provenance.input_sha256 = sha256_file(input->model);
      nlohmann::json doc = {{"results", rows}, {"provenance", provenance_json(provenance)},
                            {"text", input->text}, {"text_sha256", loaded.text_sha256}, {"tokens", input->tokens}};
      write_file_atomically(*json, doc.dump(2) + "\n");
    }
  });
}

}  // namespace kvq::app
