// kvq bench: the kernel-latency grid of a config (configs/paper_latency.yaml) into a CSV.
#include <cstdio>
#include <cstdlib>

#include <unistd.h>

#include "ablations/latency.h"
#include "apps/commands.h"

namespace kvq::app {

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Time the kernels of a latency config (configs/paper_latency.yaml) into a CSV");
  auto config = std::make_shared<std::string>();
  auto max_tokens = std::make_shared<int>(0);
  auto output = std::make_shared<std::string>();
  auto backend = std::make_shared<std::string>();
  cmd->add_option("--config", *config, "Latency config (YAML)")->required();
  cmd->add_option("--max-tokens", *max_tokens, "Skip token counts above this (0: none), e.g. for a quick CPU run");
  cmd->add_option("--output", *output, "Output CSV (overrides the config's 'output')");
  cmd->add_option("--backend", *backend, "cpu or cuda (overrides the config's 'backend')")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->callback([=] {
    auto c = ablations::load_latency_config(*config, *backend);
    if (!output->empty()) c.output = *output;
    ablations::run_latency(c, *max_tokens, isatty(fileno(stderr)) && std::getenv("CI") == nullptr, command_line());
    std::printf("wrote %s (and %s.json)\n", c.output.c_str(), c.output.c_str());
  });
}

}  // namespace kvq::app
