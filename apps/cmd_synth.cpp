// kvq synth: write a synthetic KV dump (docs/SYNTH.md).
#include <cstdio>

#include "apps/commands.h"
#include "data/synth.h"

namespace kvq::app {

void add_synth(CLI::App& app) {
  auto* cmd = app.add_subcommand("synth", "Write a seeded synthetic KV dump with outlier channels, RoPE and a sink");
  auto cfg = std::make_shared<data::SynthConfig>();
  auto out = std::make_shared<std::string>();
  auto no_rope = std::make_shared<bool>(false);
  auto no_sink = std::make_shared<bool>(false);
  auto no_queries = std::make_shared<bool>(false);
  cmd->add_option("out", *out, "Output HDF5 file")->required();
  cmd->add_option("--layers", cfg->num_layers, "Layers")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--heads", cfg->num_heads, "Query heads")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--kv-heads", cfg->num_kv_heads, "KV heads (divides --heads)")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--head-dim", cfg->head_dim, "Head dimension (even)")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", cfg->seq_len, "Tokens")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--seed", cfg->seed, "Random seed")->capture_default_str();
  cmd->add_option("--rope-theta", cfg->rope_theta, "RoPE base")->capture_default_str();
  cmd->add_option("--outliers", cfg->outlier_channels, "Outlier key channels per kv head (0: none)")->capture_default_str();
  cmd->add_option("--outlier-min", cfg->outlier_min, "Smallest outlier magnitude, x typical")->capture_default_str();
  cmd->add_option("--outlier-max", cfg->outlier_max, "Largest outlier magnitude, x typical")->capture_default_str();
  cmd->add_option("--token-norm-sigma", cfg->token_norm_sigma, "Log-normal spread of key norms (0: none)")->capture_default_str();
  cmd->add_flag("--no-rope", *no_rope, "Do not apply RoPE");
  cmd->add_flag("--no-sink", *no_sink, "No attention-sink token");
  cmd->add_flag("--no-queries", *no_queries, "Do not write queries");
  cmd->callback([=] {
    data::SynthConfig c = *cfg;
    c.rope = !*no_rope;
    c.sink = !*no_sink;
    c.queries = !*no_queries;
    data::write_synthetic_dump(c, *out, command_line());
    std::printf("wrote %s: %d layers, %d heads, %d kv heads, head_dim %d, seq_len %d, seed %llu\n", out->c_str(),
                c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.seq_len,
                static_cast<unsigned long long>(c.seed));
  });
}

}  // namespace kvq::app
