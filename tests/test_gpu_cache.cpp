// The GPU's decode path against the CPU reference: gpu::pack appending to regions in pieces,
// gpu::TensorCache (windows, flushes, key normalization) step by step, bit for bit, and
// gpu::quantized_attention over two such caches against double precision. Skipped where no CUDA device
// exists.
#include <gtest/gtest.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <random>
#include <vector>

#include "core/half.h"
#include "cpu_ref/attention.h"
#include "cpu_ref/packed_region.h"
#include "cpu_ref/tensor_cache.h"
#include "gpu/device.h"
#include "gpu/gemv.h"
#include "gpu/launch.h"
#include "gpu/pack.h"
#include "gpu/quantized_attention.h"
#include "gpu/spec_shape.h"
#include "gpu/tensor_cache.h"
#include "gpu_fixtures.h"

namespace kvq {
namespace {

using test::download;
using test::upload;

// Region r of `dev` (at its capacity strides) equals `cpu`: codes, scales with their mode bits, zero
// points and zero_base.
void expect_region_equal(const gpu::DeviceRegions& dev, int r, const cpu::PackedRegion& cpu, const std::string& where) {
  const gpu::RegionShape& s = dev.shape;
  const std::size_t meta = s.meta_fp16 ? 2 : 4;
  ASSERT_EQ(cpu.tokens(), s.tokens) << where;
  const auto codes = download(dev.codes + r * s.code_stride(), static_cast<std::size_t>(s.code_words()));
  ASSERT_EQ(codes, cpu.codes()) << where << ": codes, region " << r;
  const auto scales = download(static_cast<const std::uint8_t*>(dev.scales) + meta * r * s.group_stride(), meta * s.groups());
  const void* cs = s.meta_fp16 ? static_cast<const void*>(cpu.scales().half_bits().data()) : static_cast<const void*>(cpu.scales().float_bits().data());
  ASSERT_EQ(std::memcmp(scales.data(), cs, scales.size()), 0) << where << ": scales, region " << r;
  const std::size_t nz = cpu.zeros().size();
  if (nz == 0) return;
  std::size_t z0 = static_cast<std::size_t>(r) * s.group_stride();
  if (s.mode == gpu::GroupMode::hybrid) z0 = download(dev.zero_offset + r, 1)[0];
  const auto zeros = download(static_cast<const std::uint8_t*>(dev.zeros) + meta * z0, meta * nz);
  const void* cz = s.meta_fp16 ? static_cast<const void*>(cpu.zeros().half_bits().data()) : static_cast<const void*>(cpu.zeros().float_bits().data());
  ASSERT_EQ(std::memcmp(zeros.data(), cz, zeros.size()), 0) << where << ": zeros, region " << r;
  if (s.mode == gpu::GroupMode::hybrid) {
    const auto bases = download(dev.zero_base + r * s.zero_block_stride(), cpu.zero_base().size());
    ASSERT_EQ(bases, cpu.zero_base()) << where << ": zero_base, region " << r;
  }
}

struct AppendCase {
  Mode mode;
  int bits;
  bool channel;
  int group;
  bool fp16;
};

using GpuPackAppend = test::GpuSweep<AppendCase>;

// Pieces appended one after another (channel axis: odd counts, single tokens across 32-token
// zero-blocks; token axis: whole groups, with groups of 16 sharing a tile between pieces) give the
// regions cpu::PackedRegion::append builds from the same pieces.
TEST_P(GpuPackAppend, PiecesAreBitIdenticalToTheCpuRegion) {
  const AppendCase k = GetParam();
  const TensorSpec spec = test::swept_spec(k.mode, k.bits, k.channel, k.group, k.fp16);
  const int d = 64, regions = 3;
  const std::vector<int> pieces = k.channel ? std::vector<int>{37, 1, 1, 26, 1, 33, 1} : std::vector<int>{k.group, 3 * k.group, k.group, 2 * k.group};
  int total = 0;
  for (int n : pieces) total += n;
  gpu::RegionShape s = gpu::region_shape(spec, 0, d);
  s.capacity = (total + 127) / 128 * 128;
  test::DeviceCache cache(s, regions);  // allocated at the capacity
  gpu::DeviceRegions dev = cache.dev;
  std::uint32_t* zero_count = upload(std::vector<std::uint32_t>(regions, 0));
  std::vector<cpu::PackedRegion> cpu(regions, cpu::PackedRegion(spec, d));
  std::mt19937_64 rng(77 + k.bits + k.group);
  std::normal_distribution<float> normal;
  int at = 0;
  for (int n : pieces) {
    std::vector<float> rows(static_cast<std::size_t>(regions) * n * d);
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = round_to_half(normal(rng) * ((i % d) == 3 ? 12.0f : 1.0f));
    float* d_rows = upload(rows);
    gpu::PackParams p;
    p.rows = d_rows;
    p.out = dev;
    p.out.shape.tokens = at + n;
    p.at = at;
    p.zero_count = zero_count;
    CUDA_OK(gpu::pack(p));
    CUDA_OK(cudaDeviceSynchronize());
    cudaFree(d_rows);
    at += n;
    for (int r = 0; r < regions; ++r) {
      cpu[r].append(rows.data() + static_cast<std::size_t>(r) * n * d, n);
      expect_region_equal(p.out, r, cpu[r], "after " + std::to_string(at) + " tokens");
      if (HasFatalFailure()) return;
    }
  }
  cudaFree(zero_count);
}

std::vector<AppendCase> append_cases() {
  std::vector<AppendCase> out;
  for (Mode mode : {Mode::sym, Mode::asym, Mode::hybrid})
    for (int bits : {2, 3, 4})
      for (bool channel : {true, false})
        for (int group : {16, 32}) out.push_back({mode, bits, channel, group, bits != 4});
  return out;
}
std::string name(const AppendCase& k) {
  return std::string(to_string(k.mode)) + std::to_string(k.bits) + (k.channel ? "_channel" : "_token") + "_g" + std::to_string(k.group) + (k.fp16 ? "_fp16" : "_fp32");
}
INSTANTIATE_TEST_SUITE_P(Sweep, GpuPackAppend, ::testing::ValuesIn(append_cases()), [](const auto& info) { return name(info.param); });

// The GEMVs over a cache's regions at capacity strides (gpu::TensorCache::region()), one head per
// region: scores over keys, outputs over values, each on the layout's kernel, against double
// precision over the CPU cache's dequantized region.
void expect_products_match(const gpu::DeviceRegions& dev, const std::vector<cpu::TensorCache>& cpu, bool key, std::mt19937_64& rng,
                           const std::string& where) {
  const gpu::RegionShape& s = dev.shape;
  const int n = s.tokens, d = s.head_dim, regions = dev.regions;
  std::normal_distribution<float> normal;
  std::vector<float> w(static_cast<std::size_t>(regions) * (key ? d : n));
  for (auto& x : w) x = key ? normal(rng) : std::fabs(normal(rng)) / n;
  float* d_w = upload(w);
  std::vector<float> got;
  if (key) {
    float* d_scores = nullptr;
    CUDA_OK(cudaMalloc(&d_scores, sizeof(float) * regions * n));
    const gpu::ScoresParams sp{dev, d_w, 1, d_scores};
    CUDA_OK(s.channel_axis ? gpu::scores_inner(sp) : gpu::scores_outer(sp));
    got = download(d_scores, static_cast<std::size_t>(regions) * n);
    cudaFree(d_scores);
  } else {
    const test::OutputsRun run(dev, d_w, 1, 3, gpu::GemvKernel::automatic);
    CUDA_OK(run.status);
    got = run.host();
  }
  cudaFree(d_w);
  for (int r = 0; r < regions; ++r) {
    std::vector<float> x_hat(static_cast<std::size_t>(n) * d);
    cpu[r].region()->dequantize(x_hat.data());
    std::vector<double> ref(key ? n : d, 0.0);
    for (int t = 0; t < n; ++t)
      for (int c = 0; c < d; ++c) {
        const double x = x_hat[static_cast<std::size_t>(t) * d + c];
        if (key) ref[t] += double(w[static_cast<std::size_t>(r) * d + c]) * x;
        else ref[c] += double(w[static_cast<std::size_t>(r) * n + t]) * x;
      }
    const auto first = got.begin() + static_cast<std::ptrdiff_t>(r * ref.size());
    // The GEMV bound of the kernel sweep (test_gpu_kernels.cpp), here over capacity strides.
    EXPECT_LT(test::nmse({first, first + static_cast<std::ptrdiff_t>(ref.size())}, ref), 1e-6)
        << where << ": " << (key ? "scores" : "outputs") << ", region " << r;
  }
}

// gpu::TensorCache against cpu::TensorCache, region by region, for keys and values of InnerQ's and
// KIVI's presets: prefill, then one token at a time through sink, recent window and flushes.
TEST(GpuTensorCache, StreamsLikeTheCpuCache) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int d = 128, regions = 3, capacity = 420;
  for (const char* preset_name : {"innerq_hybrid", "kivi", "kivi_sink"})
    for (TensorKind kind : {TensorKind::key, TensorKind::value})
      for (int prefill : {20, 150, 290}) {
        const CacheSpec cs = preset(preset_name);
        const bool key = kind == TensorKind::key;
        const TensorSpec& spec = key ? cs.k : cs.v;
        const std::string where = std::string(preset_name) + (key ? " keys" : " values") + ", prefill " + std::to_string(prefill);
        SCOPED_TRACE(where);
        gpu::TensorCache gpu_cache(spec, regions, d, cs.sink, cs.recent, key && cs.key_norm, capacity);
        CUDA_OK(gpu_cache.status());
        std::vector<cpu::TensorCache> cpu_caches;
        for (int r = 0; r < regions; ++r) cpu_caches.push_back(cpu::make_cache(cs, kind, d));
        std::mt19937_64 rng(5 + prefill);
        std::normal_distribution<float> normal;
        auto draw = [&](int count) {
          std::vector<float> rows(static_cast<std::size_t>(regions) * count * d);
          for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = normal(rng) * ((i % d) == 7 ? 30.0f : 1.0f);
          return rows;
        };
        auto compare = [&](const std::string& step) {
          ASSERT_EQ(gpu_cache.size(), cpu_caches[0].size()) << step;
          ASSERT_EQ(gpu_cache.sink_tokens(), cpu_caches[0].sink_tokens()) << step;
          ASSERT_EQ(gpu_cache.quantized_tokens(), cpu_caches[0].quantized_tokens()) << step;
          ASSERT_EQ(gpu_cache.recent_tokens(), cpu_caches[0].recent_tokens()) << step;
          CUDA_OK(cudaDeviceSynchronize());
          const auto window = download(gpu_cache.window(), static_cast<std::size_t>(regions) * gpu_cache.window_stride() * d);
          for (int r = 0; r < regions; ++r) {
            const cpu::TensorCache& c = cpu_caches[r];
            if (c.region()) expect_region_equal(gpu_cache.region(), r, *c.region(), step);
            if (::testing::Test::HasFatalFailure()) return;
            // Windows: the CPU's dequantized view holds the window rows exactly (fp16 values).
            std::vector<float> view(static_cast<std::size_t>(c.size()) * d);
            c.dequantize(view.data());
            const int sink = c.sink_tokens(), q = c.quantized_tokens(), recent = c.recent_tokens();
            for (int i = 0; i < sink + recent; ++i) {
              const int t = i < sink ? i : sink + q + (i - sink);
              for (int ch = 0; ch < d; ++ch) {
                const float got = __half2float(window[(static_cast<std::size_t>(r) * gpu_cache.window_stride() + i) * d + ch]);
                ASSERT_EQ(got, view[static_cast<std::size_t>(t) * d + ch]) << step << ": window row " << i << ", region " << r;
              }
            }
            if (key && cs.key_norm && q > 0) {
              ASSERT_NE(gpu_cache.norm(), nullptr) << step;
              const auto norm = download(gpu_cache.norm() + static_cast<std::size_t>(r) * d, d);
              for (int ch = 0; ch < d; ++ch) ASSERT_EQ(float_to_half_bits(norm[ch]), c.norm_factor()[ch]) << step << ": norm, channel " << ch;
            }
          }
        };
        const auto rows = draw(prefill);
        float* d_rows = upload(rows);
        CUDA_OK(gpu_cache.prefill(d_rows, prefill));
        cudaFree(d_rows);
        for (int r = 0; r < regions; ++r) cpu_caches[r].prefill(rows.data() + static_cast<std::size_t>(r) * prefill * d, prefill);
        compare("prefill");
        if (HasFatalFailure()) return;
        for (int step = 0; step < 100; ++step) {
          const auto row = draw(1);
          float* d_row = upload(row);
          CUDA_OK(gpu_cache.append(d_row));
          cudaFree(d_row);
          for (int r = 0; r < regions; ++r) cpu_caches[r].append(row.data() + static_cast<std::size_t>(r) * d);
          if (step % 7 == 0 || step == 99) compare("append " + std::to_string(step));
          if (HasFatalFailure()) return;
        }
        // Key normalization divides the region by f: the product over the region is what the
        // kernels take (the query carries f), so the CPU's region is compared as stored.
        if (gpu_cache.quantized_tokens() > 0) expect_products_match(gpu_cache.region(), cpu_caches, key, rng, "after the appends");
      }
}

struct CacheAttentionCase {
  std::string name;
  CacheSpec spec;
  int head_dim, batch, kv_heads, group, prefill;
};

// A preset with other windows, group size, bits and key metadata, and asymmetric keys (the token-axis
// tensor flushes two groups at a time).
CacheSpec varied(const char* name, int sink, int recent, int group_size, int bits, MetaPrecision key_meta) {
  CacheSpec cs = preset(name);
  cs.sink = sink, cs.recent = recent;
  for (TensorSpec* t : {&cs.k, &cs.v}) {
    t->group_size = group_size, t->bits = bits;
    if (t->group_axis == GroupAxis::token) t->flush = 2 * group_size;
  }
  cs.k.mode = Mode::asym;
  cs.k.meta = key_meta;
  return cs;
}

std::vector<CacheAttentionCase> cache_attention_cases() {
  return {
      {"innerq_hybrid", preset("innerq_hybrid"), 128, 1, 3, 1, 257},
      {"innerq_base_gqa3", preset("innerq_base"), 64, 2, 2, 3, 200},
      {"innerq_small_prefill1", preset("innerq_small"), 128, 1, 2, 1, 1},
      {"inner_k4asym_fp32_v4hybrid_g64", varied("innerq_hybrid", 5, 7, 64, 4, MetaPrecision::fp32), 128, 1, 2, 1, 150},
      {"inner_k2asym_v2hybrid_g32_gqa4", varied("innerq_hybrid", 3, 0, 32, 2, MetaPrecision::fp16), 128, 2, 1, 4, 97},
      {"kivi", preset("kivi"), 128, 1, 3, 1, 257},
      {"kivi_sink_gqa2", preset("kivi_sink"), 64, 1, 2, 2, 161},
  };
}

using GpuCacheAttention = test::GpuSweep<CacheAttentionCase>;

// gpu::quantized_attention over a key and a value gpu::TensorCache, through prefill and appends (keys and
// values holding different quantized counts, either way round, then equal), on both routes, against
// attention in double precision over the CPU caches' dequantized tokens (cpu::TensorCache::dequantize,
// key normalization undone).
TEST_P(GpuCacheAttention, MatchesDoubleOverTheCpuCaches) {
  const CacheAttentionCase& k = GetParam();
  const CacheSpec& cs = k.spec;
  const int d = k.head_dim, regions = k.batch * k.kv_heads, group = k.group, steps = 70, capacity = k.prefill + steps;
  gpu::TensorCache keys(cs.k, regions, d, cs.sink, cs.recent, cs.key_norm, capacity);
  gpu::TensorCache values(cs.v, regions, d, cs.sink, cs.recent, false, capacity);
  CUDA_OK(keys.status());
  CUDA_OK(values.status());
  std::vector<cpu::TensorCache> cpu_keys, cpu_values;
  for (int r = 0; r < regions; ++r) {
    cpu_keys.emplace_back(cs.k, d, cs.sink, cs.recent, cs.key_norm);
    cpu_values.emplace_back(cs.v, d, cs.sink, cs.recent, false);
  }
  const std::size_t workspace_bytes = gpu::quantized_attention_workspace(keys, values, group);
  ASSERT_GT(workspace_bytes, 0u);
  void* workspace = nullptr;
  CUDA_OK(cudaMalloc(&workspace, workspace_bytes));
  float* d_out = nullptr;
  CUDA_OK(cudaMalloc(&d_out, sizeof(float) * regions * group * d));
  std::mt19937_64 rng(31 + k.prefill + d);
  std::normal_distribution<float> normal;
  auto draw = [&](int count) {  // [regions][count][d]; channel 7 an outlier, as real keys have
    std::vector<float> rows(static_cast<std::size_t>(regions) * count * d);
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = normal(rng) * ((i % d) == 7 ? 30.0f : 1.0f);
    return rows;
  };
  int checked_unequal = 0;
  auto check = [&](const std::string& step) {
    const int n = cpu_keys[0].size();
    ASSERT_EQ(keys.quantized_tokens(), cpu_keys[0].quantized_tokens()) << step;
    if (keys.quantized_tokens() != values.quantized_tokens()) ++checked_unequal;
    std::vector<float> q(static_cast<std::size_t>(regions) * group * d);
    for (auto& x : q) x = normal(rng) * 0.5f;
    float* d_q = upload(q);
    std::vector<double> ref;
    for (int r = 0; r < regions; ++r) {
      std::vector<float> kx(static_cast<std::size_t>(n) * d), vx(static_cast<std::size_t>(n) * d);
      cpu_keys[r].dequantize(kx.data());
      cpu_values[r].dequantize(vx.data());
      for (int h = 0; h < group; ++h) {
        cpu::ReferenceAttention out;
        cpu::reference_attention(kx.data(), vx.data(), n, d, q.data() + (static_cast<std::size_t>(r) * group + h) * d, out);
        ref.insert(ref.end(), out.output.begin(), out.output.end());
      }
    }
    for (gpu::AttentionRoute route : {gpu::AttentionRoute::fused, gpu::AttentionRoute::unfused}) {
      CUDA_OK(cudaMemset(d_out, 0xff, sizeof(float) * ref.size()));  // NaN: every output must be written
      gpu::CacheAttentionParams p;
      p.queries = d_q, p.group = group, p.scale = 1.0f / std::sqrt(static_cast<float>(d)), p.outputs = d_out, p.workspace = workspace;
      p.route = route;
      CUDA_OK(gpu::quantized_attention(keys, values, p));
      CUDA_OK(cudaDeviceSynchronize());
      // The GEMV and fused-attention bound of test_gpu_attention.cpp; the tokens only one cache holds
      // quantized (under a flush plus a group) are rounded to fp16 as window rows, a relative 2^-12 on
      // a few of n tokens, far below it.
      EXPECT_LT(test::nmse(download(d_out, ref.size()), ref), 1e-6)
          << step << ": " << (route == gpu::AttentionRoute::fused ? "fused" : "unfused") << ", " << n << " tokens, keys "
          << keys.quantized_tokens() << " and values " << values.quantized_tokens() << " quantized";
    }
    cudaFree(d_q);
  };
  const auto rows = draw(k.prefill);
  float* d_rows = upload(rows);
  CUDA_OK(keys.prefill(d_rows, k.prefill));
  CUDA_OK(values.prefill(d_rows, k.prefill));
  cudaFree(d_rows);
  for (int r = 0; r < regions; ++r) {
    cpu_keys[r].prefill(rows.data() + static_cast<std::size_t>(r) * k.prefill * d, k.prefill);
    cpu_values[r].prefill(rows.data() + static_cast<std::size_t>(r) * k.prefill * d, k.prefill);
  }
  check("prefill");
  for (int step = 0; step < steps && !HasFatalFailure(); ++step) {
    const auto row = draw(1);
    float* d_row = upload(row);
    CUDA_OK(keys.append(d_row));
    CUDA_OK(values.append(d_row));
    cudaFree(d_row);
    for (int r = 0; r < regions; ++r) {
      cpu_keys[r].append(row.data() + static_cast<std::size_t>(r) * d);
      cpu_values[r].append(row.data() + static_cast<std::size_t>(r) * d);
    }
    if (step % 6 == 0 || step == steps - 1) check("append " + std::to_string(step));
  }
  // Every case but the one-token prefill reaches states where the counts differ.
  if (k.prefill > 1) {
    EXPECT_GT(checked_unequal, 0);
  }
  cudaFree(workspace);
  cudaFree(d_out);
}

INSTANTIATE_TEST_SUITE_P(Sweep, GpuCacheAttention, ::testing::ValuesIn(cache_attention_cases()), [](const auto& info) { return info.param.name; });

TEST(GpuCacheAttention, RefusesCachesThatDoNotGoTogether) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const CacheSpec inner = preset("innerq_hybrid"), outer = preset("kivi");
  gpu::TensorCache keys(inner.k, 2, 128, inner.sink, inner.recent, true, 64);
  gpu::TensorCache values(inner.v, 2, 128, inner.sink, inner.recent, false, 64);
  gpu::TensorCache other_regions(inner.v, 3, 128, inner.sink, inner.recent, false, 64);
  gpu::TensorCache outer_values(outer.v, 2, 128, inner.sink, inner.recent, false, 64);  // channel-axis values beside channel-axis keys
  for (const gpu::TensorCache* c : {&keys, &values, &other_regions, &outer_values}) CUDA_OK(c->status());
  EXPECT_GT(gpu::quantized_attention_workspace(keys, values, 1), 0u);
  EXPECT_EQ(gpu::quantized_attention_workspace(keys, other_regions, 1), 0u);
  EXPECT_EQ(gpu::quantized_attention_workspace(keys, outer_values, 1), 0u);
  EXPECT_EQ(gpu::quantized_attention_workspace(keys, values, 9), 0u);
  gpu::CacheAttentionParams p;  // no queries, outputs or workspace
  EXPECT_EQ(gpu::quantized_attention(keys, values, p), cudaErrorInvalidValue);
  float *d_q = nullptr, *d_out = nullptr;
  void* workspace = nullptr;
  CUDA_OK(cudaMalloc(&d_q, sizeof(float) * 2 * 128));
  CUDA_OK(cudaMalloc(&d_out, sizeof(float) * 2 * 128));
  CUDA_OK(cudaMalloc(&workspace, gpu::quantized_attention_workspace(keys, values, 1)));
  p.queries = d_q, p.outputs = d_out, p.workspace = workspace;
  CUDA_OK(cudaMemset(d_q, 0, sizeof(float) * 2 * 128));
  CUDA_OK(gpu::quantized_attention(keys, values, p));  // both empty: outputs 0
  // Sizes that differ: one more token in the keys.
  std::vector<float> row(2 * 128, 1.0f);
  float* d_row = upload(row);
  CUDA_OK(keys.append(d_row));
  cudaFree(d_row);
  EXPECT_EQ(gpu::quantized_attention(keys, values, p), cudaErrorInvalidValue);
  cudaFree(d_q);
  cudaFree(d_out);
  cudaFree(workspace);
}

// Dependent launches (gpu/dependent_launch.cuh) change when kernels start, never what they compute:
// the same decode steps queued with no synchronization between them (prefill, appends, attention on
// both routes: staging, packing with CUB's scan, windows, GEMVs, merges back to back) give
// bit-identical outputs with them on and off. A kernel that touched memory before its wait would race
// with the one before it and differ here.
TEST(GpuDependentLaunch, ResultsEqualPlainLaunches) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const CacheSpec cs = preset("innerq_hybrid");
  const int d = 128, regions = 3, group = 1, prefill = 301, steps = 45, every = 4;
  std::mt19937_64 rng(77);
  std::normal_distribution<float> normal;
  std::vector<float> rows(static_cast<std::size_t>(regions) * (prefill + steps) * d), q(static_cast<std::size_t>(regions) * group * d);
  for (auto& x : rows) x = normal(rng);
  for (auto& x : q) x = normal(rng) * 0.5f;
  const std::size_t out_count = static_cast<std::size_t>(regions) * group * d;
  const int calls = 2 * (steps / every + 1);
  std::vector<float> outputs[2];
  for (int on = 0; on < 2; ++on) {
    const gpu::DependentLaunchScope mode(on == 1);  // gives back the mode it found
    gpu::TensorCache keys(cs.k, regions, d, cs.sink, cs.recent, cs.key_norm, prefill + steps);
    gpu::TensorCache values(cs.v, regions, d, cs.sink, cs.recent, false, prefill + steps);
    CUDA_OK(keys.status());
    CUDA_OK(values.status());
    float* d_rows = upload(std::vector<float>(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(regions) * prefill * d));
    float* d_steps = upload(std::vector<float>(rows.begin() + static_cast<std::ptrdiff_t>(regions) * prefill * d, rows.end()));  // [steps][regions][d]
    float* d_q = upload(q);
    float* d_out = nullptr;
    void* workspace = nullptr;
    CUDA_OK(cudaMalloc(&d_out, sizeof(float) * out_count * calls));
    CUDA_OK(cudaMalloc(&workspace, gpu::quantized_attention_workspace(keys, values, group)));
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(keys.prefill(d_rows, prefill));
    CUDA_OK(values.prefill(d_rows, prefill));
    int call = 0;
    for (int step = 0; step < steps; ++step) {
      CUDA_OK(keys.append(d_steps + static_cast<std::size_t>(step) * regions * d));
      CUDA_OK(values.append(d_steps + static_cast<std::size_t>(step) * regions * d));
      if (step % every != 0) continue;
      for (gpu::AttentionRoute route : {gpu::AttentionRoute::fused, gpu::AttentionRoute::unfused}) {
        gpu::CacheAttentionParams p;
        p.queries = d_q, p.group = group, p.scale = 1.0f / std::sqrt(static_cast<float>(d)), p.workspace = workspace, p.route = route;
        p.outputs = d_out + out_count * call++;
        CUDA_OK(gpu::quantized_attention(keys, values, p));
      }
    }
    CUDA_OK(cudaDeviceSynchronize());
    ASSERT_EQ(call, calls);
    outputs[on] = download(d_out, out_count * calls);
    for (void* ptr : {static_cast<void*>(d_rows), static_cast<void*>(d_steps), static_cast<void*>(d_q), static_cast<void*>(d_out), workspace}) cudaFree(ptr);
  }
  ASSERT_EQ(outputs[0].size(), outputs[1].size());
  int differ = 0;
  for (std::size_t i = 0; i < outputs[0].size(); ++i) differ += std::memcmp(&outputs[0][i], &outputs[1][i], sizeof(float)) != 0;
  EXPECT_EQ(differ, 0) << "of " << outputs[0].size() << " outputs";
  EXPECT_TRUE(std::isfinite(outputs[1][0]) && std::isfinite(outputs[1].back()));
}

TEST(GpuTensorCache, RefusesWhatItDoesNotTake) {
  TensorSpec spec;
  spec.mode = Mode::codebook;
  gpu::TensorCache codebook(spec, 1, 128, 0, 0, false, 16);
  EXPECT_EQ(codebook.status(), cudaErrorInvalidValue);
  EXPECT_NE(codebook.why().find("integer modes"), std::string::npos) << codebook.why();
  EXPECT_EQ(codebook.prefill(nullptr, 0), cudaErrorInvalidValue);
  TensorSpec token;
  token.mode = Mode::asym;
  token.group_axis = GroupAxis::token;
  token.group_size = 32;
  token.flush = 1;  // token-axis groups flush whole groups
  gpu::TensorCache bad_flush(token, 1, 128, 0, 0, false, 16);
  EXPECT_EQ(bad_flush.status(), cudaErrorInvalidValue);
  EXPECT_NE(bad_flush.why().find("flush"), std::string::npos) << bad_flush.why();
  gpu::PackParams p;
  p.out.shape.tokens = 8;
  p.at = 4;  // appending without a capacity
  EXPECT_EQ(gpu::pack(p), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvq
