// kvq sweep / kvq merge: config-driven ablation sweeps, resumable, sharded or under MPI.
#include <cstdio>
#include <cstdlib>

#include <unistd.h>

#if defined(KVQ_HAVE_MPI)
#include <mpi.h>
#endif

#include "ablations/sweep.h"
#include "apps/commands.h"
#include "core/error.h"

namespace kvq::app {
namespace {

// Parses "i/n".
void parse_shard(const std::string& text, int& shard, int& shards) {
  const auto slash = text.find('/');
  try {
    if (slash != std::string::npos) {
      shard = std::stoi(text.substr(0, slash));
      shards = std::stoi(text.substr(slash + 1));
      if (shards >= 1 && shard >= 0 && shard < shards) return;
    }
  } catch (const std::exception&) {
  }
  fail("--shard: got '{}', expected i/n with 0 <= i < n", text);
}

// True when this process was started by mpirun (OpenMPI or a PMI launcher).
bool launched_by_mpi() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE"); }

}  // namespace

void add_sweep(CLI::App& app) {
  auto* cmd = app.add_subcommand("sweep", "Run a config-driven ablation sweep (docs/CONFIG.md); mpirun -np N shards it");
  auto config = std::make_shared<std::string>();
  auto resume = std::make_shared<bool>(false);
  auto shard = std::make_shared<std::string>();
  auto output = std::make_shared<std::string>();
  cmd->add_option("config", *config, "Sweep config (YAML)")->required();
  cmd->add_flag("--resume", *resume, "Continue an interrupted sweep from its journal");
  cmd->add_option("--shard", *shard, "Run only shard i of n (i/n), for job arrays; join with kvq merge");
  cmd->add_option("--output", *output, "Output folder (overrides the config's 'output')");
  cmd->callback([=] {
    auto c = ablations::load_sweep_config(*config);
    if (!output->empty()) c.output = *output;
    ablations::SweepOptions o;
    o.resume = *resume;
    o.command = command_line();
    if (!shard->empty()) parse_shard(*shard, o.shard, o.shards);
    o.progress = isatty(fileno(stderr)) && std::getenv("CI") == nullptr;
#if defined(KVQ_HAVE_MPI)
    const bool mpi = launched_by_mpi();
    if (mpi) {
      if (!shard->empty()) fail("--shard: not with mpirun, which shards by rank");
      MPI_Init(nullptr, nullptr);
      MPI_Comm_rank(MPI_COMM_WORLD, &o.shard);
      MPI_Comm_size(MPI_COMM_WORLD, &o.shards);
      o.barrier = [] { MPI_Barrier(MPI_COMM_WORLD); };
      o.progress = o.progress && o.shard == 0;
    }
    bool wrote = false;
    try {
      wrote = ablations::run_sweep(c, o);
    } catch (...) {
      if (mpi) MPI_Abort(MPI_COMM_WORLD, 2);
      throw;
    }
    if (mpi) MPI_Finalize();
    if (mpi && o.shard != 0) return;
#else
    if (launched_by_mpi()) fail("this kvq was built without MPI (KVQ_MPI=OFF): run it without mpirun, or use --shard");
    const bool wrote = ablations::run_sweep(c, o);
#endif
    if (wrote) {
      std::printf("wrote %s/results.csv%s and manifest.json (%zu configurations)\n", c.output.c_str(),
                  c.ppl.enabled ? ", ppl.csv" : "", c.entries.size());
    } else {
      std::printf("shard %d/%d done; kvq merge %s joins the shards when all have run\n", o.shard, o.shards, c.output.c_str());
    }
  });
}

void add_merge(CLI::App& app) {
  auto* cmd = app.add_subcommand("merge", "Join the shards of a sweep (kvq sweep --shard i/n) into its results");
  auto folder = std::make_shared<std::string>();
  cmd->add_option("folder", *folder, "The sweep's output folder")->required();
  cmd->callback([=] {
    ablations::merge_sweep(*folder, command_line());
    std::printf("wrote %s/results.csv and manifest.json\n", folder->c_str());
  });
}

}  // namespace kvq::app
