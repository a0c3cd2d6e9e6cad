// kvq report: report.md and report.html from a sweep's results folder (analysis/report.py).
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <spawn.h>
#include <sys/wait.h>

#include "apps/commands.h"
#include "core/error.h"

extern char** environ;

namespace kvq::app {

void add_report(CLI::App& app) {
  auto* cmd = app.add_subcommand("report", "Write report.md and report.html (tables and figures) for a sweep's results");
  auto folder = std::make_shared<std::string>();
  auto heatmap = std::make_shared<std::string>();
  cmd->add_option("folder", *folder, "The sweep's output folder")->required();
  cmd->add_option("--heatmap", *heatmap, "Preset label for the layer x head KL heatmap (default: the config's base)");
  cmd->callback([=] {
    const bool sweep = std::filesystem::exists(*folder + "/results.csv") && std::filesystem::exists(*folder + "/manifest.json");
    if (!sweep && !std::filesystem::exists(*folder + "/bench.csv")) {
      fail("{}: no results.csv and manifest.json, nor bench.csv here (run kvq sweep or kvq bench first)", *folder);
    }
    // The project's venv Python (scripts/setup.sh installs pandas and matplotlib there); KVQ_PYTHON overrides it.
    const char* env = std::getenv("KVQ_PYTHON");
    const std::string python = env ? env : KVQ_PYTHON_DEFAULT;
    std::vector<std::string> args = {python, KVQ_REPORT_SCRIPT, *folder};
    if (!heatmap->empty()) args.insert(args.end(), {"--heatmap", *heatmap});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid;
    if (posix_spawnp(&pid, python.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
      fail("report: cannot run {} (run scripts/setup.sh, or set KVQ_PYTHON)", python);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("report: {} failed for {}", KVQ_REPORT_SCRIPT, *folder);
  });
}

}  // namespace kvq::app
