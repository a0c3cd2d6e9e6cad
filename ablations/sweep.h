#pragma once
// Runs a sweep (kvq sweep): tasks are (input, layer, kv head) slabs, each evaluated for
// every configuration at once, plus one end-to-end perplexity task when the config asks.
// Finished tasks are journaled (one line per task, written whole and synced), so an
// interrupted sweep resumes where it stopped; the results are assembled in a canonical
// order, so results.csv is byte-identical whatever the thread count, shard count or
// MPI ranks. docs/CONFIG.md describes the output folder.
#include <functional>
#include <string>

#include "ablations/sweep_config.h"

namespace kvq::ablations {

struct SweepOptions {
  bool resume = false;     // continue from the journal in the output folder
  int shard = 0;           // this process runs tasks with index % shards == shard
  int shards = 1;
  bool progress = false;   // a progress line on stderr
  std::string command;     // for provenance
  // Multi-process runs (MPI): waits for every rank before rank 0 merges. nullptr: one process.
  std::function<void()> barrier;
  bool merge = true;       // write results when every task is journaled (false: leave it to kvq merge)
};

// Runs this shard's tasks. Returns true when it also wrote results.csv (and ppl.csv) and manifest.json.
bool run_sweep(const SweepConfig& config, const SweepOptions& options);

// kvq merge: joins the journals of every shard in an output folder into the results. Throws if
// a task is missing, naming it.
void merge_sweep(const std::string& output_folder, const std::string& command);

}  // namespace kvq::ablations
