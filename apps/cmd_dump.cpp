// kvq dump: run the real model over a text and write its KV cache in the dump format.
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <unistd.h>

#include "apps/commands.h"
#include "apps/model_input.h"
#include "data/kv_dump.h"

namespace kvq::app {

void add_dump(CLI::App& app) {
  auto* cmd = app.add_subcommand("dump", "Run a GGUF Llama model over a text and dump keys, values and queries");
  auto input = std::make_shared<ModelInput>();
  auto out = std::make_shared<std::string>();
  input->add_to(*cmd);
  cmd->add_option("--out", *out, "Output KV dump (HDF5)")->required();
  cmd->callback([=] {
    const auto loaded = input->load();
    const auto& cfg = loaded.model->config();
    data::DumpInfo info;
    info.model = loaded.gguf->has("general.name") ? loaded.gguf->get_string("general.name") : "unknown";
    info.source = "gguf:" + std::filesystem::path(input->model).filename().string();
    info.num_layers = cfg.layers;
    info.num_heads = cfg.heads;
    info.num_kv_heads = cfg.kv_heads;
    info.head_dim = cfg.head_dim;
    info.seq_len = input->tokens;
    info.rope_theta = cfg.rope_theta;
    info.text_sha256 = loaded.text_sha256;
    info.has_queries = true;
    info.has_keys_pre_rope = true;
    data::DumpWriter writer(*out, info, data::WriteOptions{});
    const hid_t root = writer.file();
    writer.write_provenance(command_line());
    data::write_string_attribute(root, "text", input->text);
    data::write_string_attribute(root, "channel_order", "huggingface (RoPE pairs i, i + head_dim/2)");
    std::vector<std::int64_t> positions(static_cast<std::size_t>(input->tokens));
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int64_t>(i);
    writer.write_positions(positions);
    const bool progress = isatty(fileno(stderr)) && std::getenv("CI") == nullptr;
    const int T = input->tokens, d = cfg.head_dim;
    std::vector<float> slab(static_cast<std::size_t>(T) * d);
    auto write = [&](data::Dataset dataset, int layer, const data::Matrix& m, int heads) {
      for (int h = 0; h < heads; ++h) {
        for (int t = 0; t < T; ++t)
          for (int c = 0; c < d; ++c) slab[static_cast<std::size_t>(t) * d + c] = m(t, h * d + c);
        writer.write_slab(dataset, layer, h, slab.data());
      }
    };
    auto observe = [&](int layer, const data::Matrix& q, const data::Matrix& k_pre, const data::Matrix& k,
                       const data::Matrix& v) {
      write(data::Dataset::queries, layer, q, cfg.heads);
      write(data::Dataset::keys_pre_rope, layer, k_pre, cfg.kv_heads);
      write(data::Dataset::keys, layer, k, cfg.kv_heads);
      write(data::Dataset::values, layer, v, cfg.kv_heads);
      if (progress) std::fprintf(stderr, "\rdump: layer %d/%d   %s", layer + 1, cfg.layers, layer + 1 == cfg.layers ? "\n" : "");
    };
    const auto& model = *loaded.model;
    model.forward(
        loaded.ids, [&](int, const data::Matrix& q, const data::Matrix& k, const data::Matrix& v, data::Matrix& o) {
          model.causal_attention(q, k, v, o);
        },
        observe);
    writer.commit();
    std::printf("wrote %s: %s, %d tokens of %s, %d layers x %d kv heads x head_dim %d\n", out->c_str(),
                info.model.c_str(), T, input->text.c_str(), cfg.layers, cfg.kv_heads, d);
  });
}

}  // namespace kvq::app
