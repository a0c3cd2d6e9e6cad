// kvq quantize: what attention sees after prefill of the whole sequence, plus the packed codes.
#include <cstdio>

#include <fmt/format.h>

#include "apps/commands.h"
#include "ablations/runner.h"
#include "apps/spec_flags.h"
#include "core/packed.h"
#include "core/provenance.h"
#include "cpu_ref/tensor_cache.h"
#include "data/kv_dump.h"

namespace kvq::app {
namespace {

// packed/<keys|values>/layer<L>_head<H>/{codes, scales, zeros, zero_base, norm_factor}, with the
// window sizes as attributes: the core/packed.h layout, readable with numpy.
void write_packed(hid_t file, const std::string& tensor, int layer, int head, const cpu::TensorCache& cache) {
  using data::write_array;
  const std::string path = fmt::format("packed/{}/layer{}_head{}", tensor, layer, head);
  data::Hid group = data::create_group(file, path);
  data::write_int_attribute(group.get(), "sink_tokens", cache.sink_tokens());
  data::write_int_attribute(group.get(), "quantized_tokens", cache.quantized_tokens());
  data::write_int_attribute(group.get(), "recent_tokens", cache.recent_tokens());
  const cpu::PackedRegion* region = cache.region();
  if (!region) return;
  write_array(group.get(), "codes", H5T_NATIVE_UINT32, {region->codes().size()}, region->codes().data());
  data::Hid half = data::half_type();
  auto write_meta = [&](const char* name, const cpu::MetaArray& meta) {
    if (meta.fp16()) {
      write_array(group.get(), name, half.get(), {meta.half_bits().size()}, meta.half_bits().data());
    } else {
      write_array(group.get(), name, H5T_NATIVE_FLOAT, {meta.float_bits().size()}, meta.float_bits().data());
    }
  };
  write_meta("scales", region->scales());
  write_meta("zeros", region->zeros());
  write_array(group.get(), "zero_base", H5T_NATIVE_UINT32, {region->zero_base().size()}, region->zero_base().data());
  if (!cache.norm_factor().empty()) {
    write_array(group.get(), "norm_factor", half.get(), {cache.norm_factor().size()}, cache.norm_factor().data());
  }
  if (!cache.token_scales().empty()) {
    write_array(group.get(), "token_scale", H5T_NATIVE_FLOAT, {cache.token_scales().size()}, cache.token_scales().data());
  }
}

}  // namespace

void add_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand("quantize", "Quantize a dump: dequantized K/V as attention sees them, plus packed/");
  auto in = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto flags = std::make_shared<SpecFlags>();
  cmd->add_option("in", *in, "Input KV dump")->required();
  cmd->add_option("out", *out, "Output KV dump")->required();
  flags->add_to(*cmd, false);
  cmd->callback([=] {
    const CacheSpec spec = flags->resolve().front();
    data::DumpReader dump(*in);
    dump.check_finite();
    data::DumpInfo info = dump.info();
    spec.validate(info.head_dim);
    info.has_keys_pre_rope = false;
    data::DumpWriter writer(*out, info, data::WriteOptions{});
    const hid_t root = writer.file();
    writer.write_provenance(command_line());
    data::write_string_attribute(root, "input", *in);
    data::write_string_attribute(root, "input_sha256", sha256_file(*in));
    data::write_string_attribute(root, "spec", describe(spec));
    data::write_string_attribute(root, "preset", label(spec));
    {
      data::Hid packed = data::create_group(root, "packed");
      data::write_string_attribute(packed.get(), "spec", describe(spec));
      data::write_string_attribute(packed.get(), "layout", "core/packed.h; docs/PACKED.md");
      data::write_int_attribute(packed.get(), "layout_version", kvq::packed::kLayoutVersion);
    }
    if (info.has_positions) writer.write_positions(dump.positions());
    const int tasks = info.num_layers * info.num_kv_heads;
#pragma omp parallel for schedule(dynamic)
    for (int task = 0; task < tasks; ++task) {
      const int layer = task / info.num_kv_heads, head = task % info.num_kv_heads;
      std::vector<float> rows, dequantized(static_cast<std::size_t>(info.seq_len) * info.head_dim);
      for (auto [dataset, tspec, name] : {std::tuple{data::Dataset::keys, spec.k, "keys"},
                                          std::tuple{data::Dataset::values, spec.v, "values"}}) {
        dump.read_slab(dataset, layer, head, rows);
        // The omni-token scale spans every kv head of the layer.
        const std::vector<float> scale =
            tspec.token_scale == TokenScale::omni ? ablations::layer_omni_scale(dump, dataset, layer) : std::vector<float>{};
        cpu::TensorCache cache =
            cpu::make_cache(spec, dataset == data::Dataset::keys ? TensorKind::key : TensorKind::value, info.head_dim);
        cache.prefill(rows.data(), info.seq_len, scale.empty() ? nullptr : scale.data());
        cache.dequantize(dequantized.data());
        writer.write_slab(dataset, layer, head, dequantized.data());
        std::lock_guard<std::recursive_mutex> lock(data::h5_lock());
        write_packed(root, name, layer, head, cache);
      }
      if (info.has_queries) {
        const int group = info.group_size();
        for (int g = 0; g < group; ++g) {
          dump.read_slab(data::Dataset::queries, layer, head * group + g, rows);
          writer.write_slab(data::Dataset::queries, layer, head * group + g, rows.data());
        }
      }
    }
    writer.commit();
    std::printf("wrote %s: %s\n", out->c_str(), describe(spec).c_str());
  });
}

}  // namespace kvq::app
