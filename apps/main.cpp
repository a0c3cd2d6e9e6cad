// kvq: KV-cache quantization research tool. `kvq --help` lists the commands.
#include <cstdio>

#include <CLI/CLI.hpp>

#include "apps/commands.h"
#include "core/error.h"
#include "core/version.h"

int main(int argc, char** argv) {
  kvq::app::set_command_line(argc, argv);
  CLI::App app{"kvq: how much does compressing the attention KV cache cost in accuracy and buy in speed?"};
  app.set_version_flag("--version", std::string("kvq ") + kvq::kVersion + " (" + kvq::kGitCommit + ")");
  app.require_subcommand(1);
  kvq::app::add_synth(app);
  kvq::app::add_inspect(app);
  kvq::app::add_quantize(app);
  kvq::app::add_eval(app);
  kvq::app::add_dump(app);
  kvq::app::add_ppl(app);
  kvq::app::add_sweep(app);
  kvq::app::add_merge(app);
  kvq::app::add_report(app);
  kvq::app::add_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const kvq::Error& e) {
    std::fprintf(stderr, "kvq: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvq: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
