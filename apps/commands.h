#pragma once
// The kvq subcommands. Each add_* registers one subcommand and its callback;
// callbacks throw kvq::Error for bad input (main prints it and exits 2).
#include <CLI/CLI.hpp>

namespace kvq::app {

// The command line, for provenance.
void set_command_line(int argc, const char* const* argv);
const std::string& command_line();

void add_synth(CLI::App& app);
void add_inspect(CLI::App& app);
void add_quantize(CLI::App& app);
void add_eval(CLI::App& app);
void add_dump(CLI::App& app);
void add_ppl(CLI::App& app);
void add_sweep(CLI::App& app);
void add_merge(CLI::App& app);
void add_report(CLI::App& app);
void add_bench(CLI::App& app);

}  // namespace kvq::app
