#include "data/synth.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"
#include "core/provenance.h"

namespace kvq::data {
namespace {

// Portable normal variates: mt19937_64 is fully specified by the standard, Box-Muller is ours,
// so the same seed gives the same dump with any standard library.
class Gaussian {
 public:
  explicit Gaussian(std::uint64_t seed) : engine_(seed) {}
  double uniform() { return (static_cast<double>(engine_() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double a = 2.0 * M_PI * uniform();
    spare_ = r * std::sin(a);
    has_spare_ = true;
    return r * std::cos(a);
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0;
  bool has_spare_ = false;
};

std::uint64_t mix(std::uint64_t x) {  // splitmix64 finalizer: decorrelates per-slab seeds
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

void apply_rope(std::vector<float>& rows, int seq_len, int head_dim, double theta) {
  const int half = head_dim / 2;
  for (int t = 0; t < seq_len; ++t) {
    float* x = &rows[static_cast<std::size_t>(t) * head_dim];
    for (int i = 0; i < half; ++i) {
      const double angle = t * std::pow(theta, -2.0 * i / head_dim);
      const double c = std::cos(angle), s = std::sin(angle);
      const double a = x[i], b = x[i + half];
      x[i] = static_cast<float>(a * c - b * s);
      x[i + half] = static_cast<float>(a * s + b * c);
    }
  }
}

SynthSlab synth_slab(const SynthConfig& cfg, int layer, int kv_head) {
  const int T = cfg.seq_len, d = cfg.head_dim, half = d / 2;
  Gaussian rng(mix(cfg.seed ^ mix(static_cast<std::uint64_t>(layer) << 32 | static_cast<std::uint32_t>(kv_head))));
  SynthSlab slab;

  // The sink direction u lives on the two lowest-frequency RoPE pairs, so it barely rotates.
  const std::vector<int> sink_channels = {half - 1, d - 1, half - 2, d - 2};
  std::vector<bool> is_sink_channel(static_cast<std::size_t>(d), false);
  if (cfg.sink)
    for (int c : sink_channels) is_sink_channel[c] = true;
  std::vector<double> u(static_cast<std::size_t>(d), 0.0);
  if (cfg.sink) u[half - 1] = u[half - 2] = std::sqrt(0.5);

  std::vector<double> sigma(static_cast<std::size_t>(d)), mean(static_cast<std::size_t>(d), 0.0);
  for (int c = 0; c < d; ++c) sigma[c] = 0.5 + rng.uniform();
  for (int c = 0; c < d; ++c)
    if (is_sink_channel[c]) sigma[c] = 0.2;  // other tokens keep little energy along u
  // Outlier channels: distinct, outside the sink pairs, 10-100x (log-uniform) with a consistent sign.
  std::vector<int> candidates;
  for (int c = 0; c < d; ++c)
    if (!is_sink_channel[c]) candidates.push_back(c);
  for (int k = 0; k < cfg.outlier_channels && !candidates.empty(); ++k) {
    const std::size_t pick = static_cast<std::size_t>(rng.uniform() * static_cast<double>(candidates.size()));
    const int c = candidates[std::min(pick, candidates.size() - 1)];
    candidates.erase(std::find(candidates.begin(), candidates.end(), c));
    const double scale = cfg.outlier_min * std::pow(cfg.outlier_max / cfg.outlier_min, rng.uniform());
    sigma[c] = scale;
    mean[c] = (rng.uniform() < 0.5 ? -0.5 : 0.5) * scale;
    slab.outlier_channels.push_back(c);
  }
  std::sort(slab.outlier_channels.begin(), slab.outlier_channels.end());

  slab.keys_pre_rope.resize(static_cast<std::size_t>(T) * d);
  slab.values.resize(static_cast<std::size_t>(T) * d);
  std::vector<double> value_sigma(static_cast<std::size_t>(d));
  for (int c = 0; c < d; ++c) value_sigma[c] = 0.5 + rng.uniform();
  for (int t = 0; t < T; ++t) {
    float* k = &slab.keys_pre_rope[static_cast<std::size_t>(t) * d];
    float* v = &slab.values[static_cast<std::size_t>(t) * d];
    if (t == 0 && cfg.sink) {
      // Low norm (half a typical channel's worth per dimension of u), aligned with every query.
      for (int c = 0; c < d; ++c) k[c] = static_cast<float>(4.0 * u[c] + 0.05 * rng());
      for (int c = 0; c < d; ++c) v[c] = static_cast<float>(0.1 * value_sigma[c] * rng());
      continue;
    }
    const double norm = cfg.token_norm_sigma > 0 ? std::exp(cfg.token_norm_sigma * rng()) : 1.0;
    for (int c = 0; c < d; ++c) k[c] = static_cast<float>(norm * (mean[c] + sigma[c] * rng()));
    for (int c = 0; c < d; ++c) v[c] = static_cast<float>(value_sigma[c] * rng());
  }
  slab.keys = slab.keys_pre_rope;
  if (cfg.rope) apply_rope(slab.keys, T, d, cfg.rope_theta);

  if (cfg.queries) {
    const int group = cfg.num_heads / cfg.num_kv_heads;
    const double sink_strength = cfg.sink ? 20.0 : 0.0;
    for (int g = 0; g < group; ++g) {
      std::vector<float> q(static_cast<std::size_t>(T) * d);
      for (int t = 0; t < T; ++t) {
        for (int c = 0; c < d; ++c) {
          // Noise scaled by 1/sigma balances every channel's share of q.k, as trained models do. RoPE
          // mixes channel c with its partner c +- d/2, so balance against the larger of the pair.
          const double pair_sigma = std::max(sigma[c], sigma[(c + half) % d]);
          const double noise = is_sink_channel[c] ? rng() : rng() / pair_sigma;
          q[static_cast<std::size_t>(t) * d + c] = static_cast<float>(sink_strength * u[c] + noise);
        }
      }
      if (cfg.rope) apply_rope(q, T, d, cfg.rope_theta);
      slab.queries.push_back(std::move(q));
    }
  }
  return slab;
}

void write_synthetic_dump(const SynthConfig& cfg, const std::string& path, const std::string& command) {
  if (cfg.num_layers <= 0 || cfg.num_heads <= 0 || cfg.num_kv_heads <= 0 || cfg.seq_len <= 0) {
    fail("synth: layers, heads, kv heads and seq_len must be positive");
  }
  if (cfg.num_heads % cfg.num_kv_heads != 0) {
    fail("synth: heads ({}) must be a multiple of kv heads ({})", cfg.num_heads, cfg.num_kv_heads);
  }
  if (cfg.head_dim <= 0 || cfg.head_dim % 2 != 0 || (cfg.sink && cfg.head_dim < 8)) {
    fail("synth: head_dim must be even and at least 8, got {}", cfg.head_dim);
  }
  if (cfg.outlier_channels < 0 || cfg.outlier_min <= 0 || cfg.outlier_max < cfg.outlier_min) {
    fail("synth: outliers must be >= 0 with 0 < outlier_min <= outlier_max");
  }
  DumpInfo info;
  info.model = "synthetic";
  info.source = "synthetic";
  info.num_layers = cfg.num_layers;
  info.num_heads = cfg.num_heads;
  info.num_kv_heads = cfg.num_kv_heads;
  info.head_dim = cfg.head_dim;
  info.seq_len = cfg.seq_len;
  info.rope_theta = cfg.rope_theta;
  info.has_queries = cfg.queries;
  info.has_keys_pre_rope = true;
  DumpWriter writer(path, info, WriteOptions{});
  const std::string config_text = fmt::format(
      "layers={} heads={} kv_heads={} head_dim={} seq_len={} seed={} rope={} rope_theta={} outliers={} "
      "outlier_min={} outlier_max={} sink={} token_norm_sigma={} queries={}",
      cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.seq_len, cfg.seed, cfg.rope, cfg.rope_theta,
      cfg.outlier_channels, cfg.outlier_min, cfg.outlier_max, cfg.sink, cfg.token_norm_sigma, cfg.queries);
  writer.write_provenance(command);
  write_string_attribute(writer.file(), "synth_config", config_text);
  write_int_attribute(writer.file(), "seed", static_cast<long long>(cfg.seed));
  std::vector<std::int64_t> positions(static_cast<std::size_t>(cfg.seq_len));
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int64_t>(i);
  writer.write_positions(positions);

  const int slabs = cfg.num_layers * cfg.num_kv_heads;
  const int group = cfg.num_heads / cfg.num_kv_heads;
  std::vector<int> outliers(static_cast<std::size_t>(slabs) * cfg.outlier_channels, -1);
#pragma omp parallel for schedule(dynamic)
  for (int s = 0; s < slabs; ++s) {
    const int layer = s / cfg.num_kv_heads, head = s % cfg.num_kv_heads;
    const SynthSlab slab = synth_slab(cfg, layer, head);
    writer.write_slab(Dataset::keys, layer, head, slab.keys.data());
    writer.write_slab(Dataset::keys_pre_rope, layer, head, slab.keys_pre_rope.data());
    writer.write_slab(Dataset::values, layer, head, slab.values.data());
    for (int g = 0; g < static_cast<int>(slab.queries.size()); ++g)
      writer.write_slab(Dataset::queries, layer, head * group + g, slab.queries[g].data());
    std::copy(slab.outlier_channels.begin(), slab.outlier_channels.end(),
              outliers.begin() + static_cast<std::ptrdiff_t>(s) * cfg.outlier_channels);
  }
  if (cfg.outlier_channels > 0) {
    write_array(writer.file(), "synth_outlier_channels", H5T_NATIVE_INT,
                {static_cast<hsize_t>(cfg.num_layers), static_cast<hsize_t>(cfg.num_kv_heads),
                 static_cast<hsize_t>(cfg.outlier_channels)},
                outliers.data());
  }
  writer.commit();
}

}  // namespace kvq::data
