#include "ablations/latency.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>

#include "ablations/yaml_reader.h"

#include "analysis/results.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/half.h"
#include "core/provenance.h"
#include "core/spec.h"
#include "cpu_ref/attention.h"
#include "cpu_ref/tensor_cache.h"
#ifdef KVQ_HAVE_CUDA
#include "ablations/latency_cuda.h"
#include "gpu/launch.h"
#endif

namespace kvq::ablations {
namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Bandwidth of a large copy (bytes read + written per second), the CPU's practical roofline.
double copy_bandwidth() {
  const std::size_t n = std::size_t{1} << 27;  // 128 MiB, far past the caches
  std::vector<char> a(n, 1), b(n, 2);
  std::vector<double> times;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    std::memcpy(b.data(), a.data(), n);
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    a[static_cast<std::size_t>(i)] = b[n - 1 - static_cast<std::size_t>(i)];
  }
  return 2.0 * static_cast<double>(n) / median(times);
}

}  // namespace

LatencyConfig parse_latency_config(const std::string& text, const std::string& path, const std::string& backend) {
  const YamlReader r(path);
  const YAML::Node root = r.load(text);
  r.known_keys(root, {"name", "shapes", "methods", "kernels", "backend", "dependent_launch", "repeats", "seed", "output"}, "the config");
  LatencyConfig c;
  c.path = path;
  c.text = text;
  c.name = root["name"] ? r.value<std::string>(root["name"], "name", "a string") : "latency";
  if (!root["shapes"] || !root["shapes"].IsMap()) r.error(root, "missing 'shapes' (name -> {batch, heads, kv_heads, head_dim, tokens})");
  for (const auto& s : root["shapes"]) {
    LatencyShape shape;
    shape.name = s.first.as<std::string>();
    r.known_keys(s.second, {"batch", "heads", "kv_heads", "head_dim", "tokens"}, "shape '" + shape.name + "'");
    if (s.second["batch"]) shape.batch = r.value<int>(s.second["batch"], "batch", "an integer");
    if (s.second["heads"]) shape.heads = r.value<int>(s.second["heads"], "heads", "an integer");
    if (s.second["kv_heads"]) shape.kv_heads = r.value<int>(s.second["kv_heads"], "kv_heads", "an integer");
    if (s.second["head_dim"]) shape.head_dim = r.value<int>(s.second["head_dim"], "head_dim", "an integer");
    shape.tokens = r.value<std::vector<int>>(s.second["tokens"], "tokens", "a list of token counts");
    if (shape.batch < 1 || shape.kv_heads < 1 || shape.heads % shape.kv_heads != 0 || shape.head_dim % 32 != 0) {
      r.error(s.second, "shape '" + shape.name + "': batch >= 1, heads a multiple of kv_heads, head_dim a multiple of 32");
    }
    for (int n : shape.tokens)
      if (n < 1) r.error(s.second["tokens"], "tokens: expected positive counts");
    c.shapes.push_back(shape);
  }
  c.methods = root["methods"] ? r.value<std::vector<std::string>>(root["methods"], "methods", "a list of presets")
                              : std::vector<std::string>{"fp16", "kivi", "innerq_hybrid"};
  for (const auto& m : c.methods) {
    try {
      preset(m);
    } catch (const Error& e) {
      r.error(root["methods"], e.what());
    }
  }
  c.kernels = root["kernels"] ? r.value<std::vector<std::string>>(root["kernels"], "kernels", "a list")
                              : std::vector<std::string>{"qk", "pv", "attention"};
  for (const auto& k : c.kernels)
    if (k != "qk" && k != "pv" && k != "attention") r.error(root["kernels"], "kernels: got '" + k + "', expected qk, pv, attention");
  if (root["backend"]) c.backend = r.value<std::string>(root["backend"], "backend", "cpu or cuda");
  if (!backend.empty()) c.backend = backend;
  if (c.backend != "cpu" && c.backend != "cuda") r.error(root["backend"], "backend: got '" + c.backend + "', expected cpu or cuda");
#ifndef KVQ_HAVE_CUDA
  if (c.backend == "cuda") r.error(root["backend"], "backend: cuda needs kvq built with KVQ_CUDA=ON (no CUDA compiler was found at build time)");
#endif
  if (root["dependent_launch"]) c.dependent_launch = r.value<bool>(root["dependent_launch"], "dependent_launch", "true or false");
  if (root["repeats"]) c.repeats = r.value<int>(root["repeats"], "repeats", "an integer");
  if (root["seed"]) c.seed = r.value<std::uint64_t>(root["seed"], "seed", "an integer");
  c.output = root["output"] ? r.value<std::string>(root["output"], "output", "a path") : "results/" + c.name + "/bench.csv";
  return c;
}

LatencyConfig load_latency_config(const std::string& path, const std::string& backend) {
  return parse_latency_config(read_config_file(path), path, backend);
}

void run_latency(const LatencyConfig& c, int max_tokens, bool progress, const std::string& command) {
  std::string device = "cpu";
  const bool cuda = c.backend == "cuda";
#ifdef KVQ_HAVE_CUDA
  const gpu::DependentLaunchScope launch_mode(c.dependent_launch);  // this run's kernels' launch mode
  const double bandwidth = cuda ? cuda_copy_bandwidth(device) : copy_bandwidth();
#else
  const double bandwidth = copy_bandwidth();
#endif
  std::vector<std::string> skipped;
  struct Row {
    std::vector<std::string> cells;
    double us;
    std::string key;  // shape/tokens/kernel, to find the fp16 and kivi rows of the same cell
    std::string method;
  };
  std::vector<Row> rows;
  auto add_row = [&](const LatencyShape& shape, int N, const std::string& method, const std::string& kernel, double us, std::size_t bytes) {
    const double gbs = static_cast<double>(bytes) / (us * 1e-6) / 1e9;
    const double floor_us = static_cast<double>(bytes) / bandwidth * 1e6;
    rows.push_back({{shape.name, std::to_string(shape.batch), std::to_string(shape.heads), std::to_string(shape.kv_heads),
                     std::to_string(shape.head_dim), std::to_string(N), method, kernel, c.backend, analysis::number_text(us),
                     std::to_string(bytes), analysis::number_text(gbs), analysis::number_text(100.0 * floor_us / us)},
                    us, fmt::format("{}/{}/{}", shape.name, N, kernel), method});
    if (progress) std::fprintf(stderr, "bench: %s N=%d %s %s: %.1f us\n", shape.name.c_str(), N, method.c_str(), kernel.c_str(), us);
  };
  for (const auto& shape : c.shapes) {
    for (int N : shape.tokens) {
      if (max_tokens > 0 && N > max_tokens) continue;
      const int d = shape.head_dim, group = shape.heads / shape.kv_heads, caches = shape.batch * shape.kv_heads;
      for (const auto& method : c.methods) {
        const CacheSpec spec = preset(method);
        spec.validate(d);
#ifdef KVQ_HAVE_CUDA
        if (cuda) {
          for (const auto& kernel : c.kernels) {
            const std::string why = cuda_unsupported(spec, kernel);
            if (!why.empty()) {
              const std::string note = fmt::format("{} {}: {}", method, kernel, why);
              if (std::find(skipped.begin(), skipped.end(), note) == skipped.end()) skipped.push_back(note);
              if (progress) std::fprintf(stderr, "bench: skipped %s\n", note.c_str());
              continue;
            }
            const CudaTiming t = time_cuda(shape, N, spec, kernel, c.repeats, c.seed + static_cast<std::uint64_t>(N));
            add_row(shape, N, method, kernel, t.us, t.bytes);
          }
          continue;
        }
#endif
        // Seeded random keys and values (fp16-representable), one cache pair per (batch, kv head).
        std::vector<cpu::TensorCache> keys, values;
        std::mt19937_64 rng(c.seed + static_cast<std::uint64_t>(N));
        std::normal_distribution<float> normal;
        std::vector<float> rows_k(static_cast<std::size_t>(N) * d), rows_v(rows_k.size());
        for (int i = 0; i < caches; ++i) {
          for (auto& x : rows_k) x = round_to_half(normal(rng));
          for (auto& x : rows_v) x = round_to_half(normal(rng));
          keys.push_back(cpu::make_cache(spec, TensorKind::key, d));
          values.push_back(cpu::make_cache(spec, TensorKind::value, d));
          // Timing does not depend on the scales' values: each cache stands for a one-head layer.
          keys.back().prefill(rows_k.data(), N, cpu::omni_token_scale({rows_k.data()}, N, d).data());
          values.back().prefill(rows_v.data(), N, cpu::omni_token_scale({rows_v.data()}, N, d).data());
        }
        std::vector<float> q(static_cast<std::size_t>(shape.batch) * shape.heads * d), p(static_cast<std::size_t>(N));
        for (auto& x : q) x = normal(rng);
        for (auto& x : p) x = normal(rng);
        cpu::softmax(p);
        std::size_t cache_bytes_k = 0, cache_bytes_v = 0;
        for (int i = 0; i < caches; ++i) cache_bytes_k += keys[i].bytes(), cache_bytes_v += values[i].bytes();
        for (const auto& kernel : c.kernels) {
          std::vector<float> scores(static_cast<std::size_t>(N)), out(static_cast<std::size_t>(d));
          cpu::AttentionResult result;
          auto call = [&] {
            for (int i = 0; i < caches; ++i)
              for (int g = 0; g < group; ++g) {
                const float* qh = &q[(static_cast<std::size_t>(i / shape.kv_heads) * shape.heads + (i % shape.kv_heads) * group + g) * d];
                if (kernel == "qk") keys[i].dot_rows(qh, scores.data());
                if (kernel == "pv") values[i].weighted_sum(p.data(), out.data());
                if (kernel == "attention") cpu::quantized_attention(keys[i], values[i], qh, result);
              }
          };
          call();  // warm-up
          std::vector<double> times;
          for (int r = 0; r < c.repeats; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            call();
            times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
          }
          const double us = median(times) * 1e6;
          // Bytes the kernel must read: the cache once (query heads sharing a kv head read it once).
          add_row(shape, N, method, kernel, us, kernel == "qk" ? cache_bytes_k : kernel == "pv" ? cache_bytes_v : cache_bytes_k + cache_bytes_v);
        }
      }
    }
  }
  std::map<std::string, double> fp16, outer;
  for (const auto& r : rows) {
    if (r.method == "fp16") fp16[r.key] = r.us;
    if (r.method == "kivi") outer[r.key] = r.us;
  }
  std::string csv = analysis::csv_line({"shape", "batch", "heads", "kv_heads", "head_dim", "tokens", "method", "kernel",
                                        "backend", "us", "bytes", "gb_per_s", "roofline_pct", "speedup_vs_fp16",
                                        "speedup_vs_kivi"});
  for (auto& r : rows) {
    r.cells.push_back(fp16.count(r.key) ? analysis::number_text(fp16[r.key] / r.us) : "");
    r.cells.push_back(outer.count(r.key) ? analysis::number_text(outer[r.key] / r.us) : "");
    csv += analysis::csv_line(r.cells);
  }
  std::filesystem::create_directories(std::filesystem::path(c.output).parent_path());
  write_file_atomically(c.output, csv);
  Provenance prov;
  prov.command = command;
  prov.config = c.path;
  prov.seed = c.seed;
  nlohmann::json manifest = {{"provenance", provenance_json(prov)}, {"config", c.text}, {"backend", c.backend},
                             {"copy_bandwidth_gb_per_s", bandwidth / 1e9}, {"max_tokens", max_tokens}, {"device", device},
                             {"skipped", skipped}};
  if (cuda) manifest["dependent_launch"] = c.dependent_launch;  // the cuda backend's timings depend on it
  write_file_atomically(c.output + ".json", manifest.dump(2) + "\n");
}

}  // namespace kvq::ablations
