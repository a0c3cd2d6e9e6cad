// The fused decode attention and the GQA-group axis of the tensor-core GEMVs against double
// precision on the CPU reference's dequantized cache (each device function paired with a naive
// double loop; every built template combination swept; seeds fixed). Skipped without a CUDA device.
#include <gtest/gtest.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "core/half.h"
#include "gpu/attention.h"
#include "gpu/device.h"
#include "gpu/gemv.h"
#include "gpu_fixtures.h"

namespace kvq {
namespace {

using test::download;
using test::PackedPair;
using test::upload;

TensorSpec quantized(Mode mode, int bits, GroupAxis axis, int group_size) {
  TensorSpec t;
  t.mode = mode;
  t.bits = bits;
  t.group_axis = axis;
  t.group_size = group_size;
  return t;
}

// Naive double attention for region r, head h over keys/values [tokens][d] (quantized rows then
// window rows), with optional per-token scales on the quantized rows.
std::vector<double> attention_ref(const std::vector<const float*>& keys, const std::vector<const float*>& values, const float* q, int d,
                                  double scale, const std::vector<double>& key_sigma, const std::vector<double>& value_sigma) {
  const std::size_t n = keys.size();
  std::vector<double> s(n), out(static_cast<std::size_t>(d), 0.0);
  double m = -INFINITY;
  for (std::size_t t = 0; t < n; ++t) {
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += double(q[c]) * keys[t][c];
    s[t] = dot * key_sigma[t] * scale;
    m = std::max(m, s[t]);
  }
  double l = 0;
  for (auto& x : s) l += (x = std::exp(x - m));
  for (std::size_t t = 0; t < n; ++t)
    for (int c = 0; c < d; ++c) out[static_cast<std::size_t>(c)] += s[t] / l * value_sigma[t] * values[t][c];
  return out;
}

struct AttentionCase {
  int key_bits, value_bits, head_dim, group;
  Mode key_mode, value_mode;
  bool token_scales;
  int key_group = 32, value_group = 32;
  bool meta_fp32 = false;
};

std::vector<AttentionCase> attention_cases() {
  // Every built (key bits, value bits, head_dim, group) kernel of the staged machinery (groups 2..8),
  // with the modes and the metadata precision taken in turn.
  std::vector<AttentionCase> out;
  const Mode modes[] = {Mode::sym, Mode::asym, Mode::hybrid};
  int i = 0;
  for (auto [kb, vb] : {std::pair{3, 2}, std::pair{3, 3}, std::pair{2, 2}, std::pair{4, 4}})
    for (int d : {64, 128})
      for (int group = 1; group <= 8; ++group, ++i)
        if (group > 1) {
          AttentionCase c{kb, vb, d, group, modes[i % 3], modes[(i / 3) % 3], i % 4 == 1};
          c.meta_fp32 = i % 5 == 2;
          out.push_back(c);
        }
  // One query head per kv head runs the lane-owned kernel (fp16 metadata; fp32 takes the staged one):
  // every pair of modes, with group sizes, token scales and the metadata precision taken in turn.
  int j = 0;
  for (auto [kb, vb] : {std::pair{3, 2}, std::pair{3, 3}, std::pair{2, 2}, std::pair{4, 4}})
    for (int d : {64, 128})
      for (Mode km : modes)
        for (Mode vm : modes) {
          const int sizes[] = {32, 64, 128};
          AttentionCase c{kb, vb, d, 1, km, vm, j % 2 == 1};
          c.key_group = std::min(sizes[j % 3], d);
          c.value_group = sizes[(j / 3) % 3];
          c.meta_fp32 = j % 7 == 3;
          out.push_back(c);
          ++j;
        }
  return out;
}

std::string attention_name(const AttentionCase& c) {
  return "k" + std::to_string(c.key_bits) + to_string(c.key_mode) + "_v" + std::to_string(c.value_bits) + to_string(c.value_mode) + "_d" +
         std::to_string(c.head_dim) + "_gqa" + std::to_string(c.group) + (c.token_scales ? "_scaled" : "") +
         (c.group == 1 ? "_kg" + std::to_string(c.key_group) + "_vg" + std::to_string(c.value_group) : "") +
         (c.meta_fp32 ? "_meta32" : "");
}

class GpuAttention : public ::testing::TestWithParam<AttentionCase> {
 protected:
  void SetUp() override {
    if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// One way of running the attention: sets what it needs in p (scores: [regions][group][max(n, 1)] fp32
// scratch) and launches.
struct Route {
  const char* name;
  std::function<cudaError_t(gpu::AttentionParams& p, float* scores)> run;
};

// Every route on seeded caches of kspec/vspec (3 regions) plus fp16 windows, against a double
// attention over the CPU reference's dequantized cache and the windows. Quantized token counts are
// multiples of `whole` (the token-axis tensor's group size).
void check_attention(const TensorSpec& kspec, const TensorSpec& vspec, int d, int group, bool token_scales, std::uint64_t seed, int whole,
                     const std::vector<Route>& routes) {
  const int regions = 3;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  // (quantized tokens, window tokens): window only, one group, partial stretches crossing parts, many
  // parts.
  for (auto [n, w] : {std::pair{0, 1}, std::pair{0, 3}, std::pair{whole, 0}, std::pair{whole, 31}, std::pair{9 * whole, 33}, std::pair{129 * whole, 1}}) {
    SCOPED_TRACE("quantized " + std::to_string(n) + " window " + std::to_string(w));
    std::vector<float> krows(static_cast<std::size_t>(regions) * n * d), vrows(krows.size());
    for (std::size_t i = 0; i < krows.size(); ++i) {
      krows[i] = round_to_half(normal(rng) * ((i % d) == 3 ? 8.0f : 1.0f));  // an outlier channel in the keys
      vrows[i] = round_to_half(normal(rng));
    }
    std::vector<__half> wk(static_cast<std::size_t>(regions) * w * d), wv(wk.size());
    std::vector<float> wkf(wk.size()), wvf(wk.size());
    for (std::size_t i = 0; i < wk.size(); ++i) wk[i] = __float2half(wkf[i] = round_to_half(normal(rng))), wv[i] = __float2half(wvf[i] = round_to_half(normal(rng)));
    std::vector<float> q(static_cast<std::size_t>(regions) * group * d), ksig(static_cast<std::size_t>(regions) * n, 1.0f), vsig(ksig.size(), 1.0f);
    for (auto& x : q) x = normal(rng);
    if (token_scales)
      for (std::size_t i = 0; i < ksig.size(); ++i) ksig[i] = 0.5f + std::fabs(normal(rng)), vsig[i] = 0.5f + std::fabs(normal(rng));
    PackedPair kp(kspec, krows, regions, n, d), vp(vspec, vrows, regions, n, d);
    float *d_q = upload(q), *d_ks = upload(ksig), *d_vs = upload(vsig), *d_out = nullptr, *d_scratch = nullptr, *d_scores = nullptr;
    __half *d_wk = upload(wk), *d_wv = upload(wv);
    gpu::DeviceInfo info;
    CUDA_OK(gpu::query_device(0, info));
    gpu::AttentionParams p;
    p.keys = kp.cache.dev;
    p.values = vp.cache.dev;
    p.key_token_scale = token_scales ? d_ks : nullptr;
    p.value_token_scale = token_scales ? d_vs : nullptr;
    p.window_keys = d_wk, p.window_values = d_wv, p.window = w;
    p.queries = d_q, p.group = group, p.scale = 1.0f / std::sqrt(static_cast<float>(d));
    p.splits = gpu::attention_splits(regions, n, info.multiprocessors);
    CUDA_OK(cudaMalloc(&d_out, sizeof(float) * regions * group * d));
    CUDA_OK(cudaMalloc(&d_scratch, sizeof(float) * gpu::attention_scratch_floats(regions, group, d, p.splits)));
    CUDA_OK(cudaMalloc(&d_scores, sizeof(float) * regions * group * std::max(n, 1)));
    p.outputs = d_out, p.scratch = d_scratch;
    std::vector<double> ref;
    for (int r = 0; r < regions; ++r) {
      std::vector<const float*> ks, vs;
      std::vector<double> ksg, vsg;
      for (int t = 0; t < n; ++t) {
        const std::size_t row = (static_cast<std::size_t>(r) * n + t);
        ks.push_back(kp.dequantized.data() + row * d), vs.push_back(vp.dequantized.data() + row * d);
        ksg.push_back(ksig[row]), vsg.push_back(vsig[row]);
      }
      for (int t = 0; t < w; ++t) {
        const std::size_t row = static_cast<std::size_t>(r) * w + t;
        ks.push_back(wkf.data() + row * d), vs.push_back(wvf.data() + row * d), ksg.push_back(1.0), vsg.push_back(1.0);
      }
      for (int h = 0; h < group; ++h) {
        const auto o = attention_ref(ks, vs, q.data() + (static_cast<std::size_t>(r) * group + h) * d, d, p.scale, ksg, vsg);
        ref.insert(ref.end(), o.begin(), o.end());
      }
    }
    for (const Route& route : routes) {
      SCOPED_TRACE(route.name);
      CUDA_OK(cudaMemset(d_out, 0xff, sizeof(float) * regions * group * d));  // NaN: every output must be written
      CUDA_OK(route.run(p, d_scores));
      CUDA_OK(cudaDeviceSynchronize());
      const auto got = download(d_out, static_cast<std::size_t>(regions) * group * d);
      // fp32 softmax with __expf (a few ulp) and q and p on the tensor cores as hi/lo fp16 (~2^-22
      // each) or 16-bit fixed point (~2^-16 of the largest in a chunk or stretch): ~1e-10 expected
      // (the GEMV tests measure up to ~2e-9); 1e-6 is tighter than the 5e-4 for
      // fp16-softmax paths.
      EXPECT_LT(test::nmse(got, ref), 1e-6);
    }
    for (void* ptr : std::initializer_list<void*>{d_q, d_ks, d_vs, d_out, d_scratch, d_wk, d_wv, d_scores}) cudaFree(ptr);
  }
}

TEST_P(GpuAttention, FusedMatchesDoubleOnTheDequantizedCache) {
  const AttentionCase k = GetParam();
  TensorSpec kspec = quantized(k.key_mode, k.key_bits, GroupAxis::channel, k.key_group);
  TensorSpec vspec = quantized(k.value_mode, k.value_bits, GroupAxis::token, k.value_group);
  if (k.meta_fp32) kspec.meta = vspec.meta = MetaPrecision::fp32;
  // The fused kernel, and the unfused route (scores_scratch: the keys' GEMV, then
  // the values' kernel with the online softmax over its scores).
  const std::vector<Route> routes{
      {"fused", [](gpu::AttentionParams& p, float* scores) { return p.scores_scratch = scores, p.route = gpu::AttentionRoute::fused, gpu::attention_inner(p); }},
      {"unfused",
       [](gpu::AttentionParams& p, float* scores) { return p.scores_scratch = scores, p.route = gpu::AttentionRoute::unfused, gpu::attention_inner(p); }}};
  check_attention(kspec, vspec, k.head_dim, k.group, k.token_scales, 77 + k.key_bits * 7 + k.value_bits * 13 + k.head_dim + k.group, k.value_group, routes);
}

INSTANTIATE_TEST_SUITE_P(Sweep, GpuAttention, ::testing::ValuesIn(attention_cases()), [](const auto& info) { return attention_name(info.param); });

// The outer layouts (KIVI's: token-axis key groups, channel-axis value groups) through attention_outer:
// bits 2/4/8 (the tensor-core GEMVs where the metadata is fp16) and 3 (CUDA cores), head_dim 64 and
// 128, one, four and seven query heads per kv head, with the modes, group sizes, token scales and the
// metadata precision taken in turn; then KIVI's own configuration.
struct OuterCase {
  int bits, head_dim, group;
  Mode key_mode, value_mode;
  int key_group, value_group;
  bool token_scales, meta_fp32;
};

std::vector<OuterCase> outer_cases() {
  std::vector<OuterCase> out;
  const Mode modes[] = {Mode::sym, Mode::asym, Mode::hybrid};
  const int sizes[] = {32, 16, 64, 128};
  int i = 0;
  for (int bits : {2, 3, 4, 8})
    for (int d : {64, 128})
      for (int group : {1, 4, 7}) {
        out.push_back({bits, d, group, modes[i % 3], modes[(i / 3) % 3], sizes[i % 4], std::min(sizes[(i + 1) % 4], d), i % 2 == 1, i % 5 == 3});
        ++i;
      }
  // KIVI's own cache, as the benchmarks' paper and serving shapes take it: 2-bit asym keys and values,
  // groups of 32, fp16 metadata, head_dim 128, one and four query heads per kv head.
  for (int group : {1, 4}) out.push_back({2, 128, group, Mode::asym, Mode::asym, 32, 32, false, false});
  return out;
}

class GpuOuterAttention : public ::testing::TestWithParam<OuterCase> {
 protected:
  void SetUp() override {
    if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(GpuOuterAttention, MatchesDoubleOnTheDequantizedCache) {
  const OuterCase k = GetParam();
  TensorSpec kspec = quantized(k.key_mode, k.bits, GroupAxis::token, k.key_group);
  TensorSpec vspec = quantized(k.value_mode, k.bits, GroupAxis::channel, k.value_group);
  if (k.meta_fp32) kspec.meta = vspec.meta = MetaPrecision::fp32;
  const std::vector<Route> routes{{"outer", [](gpu::AttentionParams& p, float* scores) { return p.scores_scratch = scores, gpu::attention_outer(p); }}};
  check_attention(kspec, vspec, k.head_dim, k.group, k.token_scales, 91 + k.bits * 5 + k.head_dim + k.group, k.key_group, routes);
}

INSTANTIATE_TEST_SUITE_P(Sweep, GpuOuterAttention, ::testing::ValuesIn(outer_cases()), [](const auto& info) {
  const OuterCase& c = info.param;
  return "k" + std::to_string(c.bits) + to_string(c.key_mode) + "_v" + std::to_string(c.bits) + to_string(c.value_mode) + "_d" + std::to_string(c.head_dim) + "_gqa" +
         std::to_string(c.group) + "_kg" + std::to_string(c.key_group) + "_vg" + std::to_string(c.value_group) + (c.token_scales ? "_scaled" : "") +
         (c.meta_fp32 ? "_meta32" : "");
});

TEST(GpuAttentionFp16, FusedMatchesDouble) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  gpu::DeviceInfo info;
  CUDA_OK(gpu::query_device(0, info));
  for (int d : {64, 128})
    for (int group = 1; group <= 8; ++group)
      for (int n : {1, 3, 31, 33, 257, 4097}) {
        SCOPED_TRACE("d " + std::to_string(d) + " group " + std::to_string(group) + " n " + std::to_string(n));
        const int regions = 2;
        std::mt19937_64 rng(n * 8 + group + d);
        std::normal_distribution<float> normal;
        std::vector<__half> kh(static_cast<std::size_t>(regions) * n * d), vh(kh.size());
        std::vector<float> kf(kh.size()), vf(kh.size()), q(static_cast<std::size_t>(regions) * group * d);
        for (std::size_t i = 0; i < kh.size(); ++i) kh[i] = __float2half(kf[i] = round_to_half(normal(rng))), vh[i] = __float2half(vf[i] = round_to_half(normal(rng)));
        for (auto& x : q) x = normal(rng) * 2.0f;  // peaked softmax
        __half *d_k = upload(kh), *d_v = upload(vh);
        float *d_q = upload(q), *d_out = nullptr, *d_scratch = nullptr;
        gpu::Fp16AttentionParams p;
        p.keys = d_k, p.values = d_v, p.regions = regions, p.tokens = n, p.head_dim = d, p.group = group, p.queries = d_q;
        p.scale = 1.0f / std::sqrt(static_cast<float>(d));
        p.splits = gpu::attention_splits(regions, n, info.multiprocessors);
        CUDA_OK(cudaMalloc(&d_out, sizeof(float) * regions * group * d));
        CUDA_OK(cudaMalloc(&d_scratch, sizeof(float) * gpu::attention_scratch_floats(regions, group, d, p.splits)));
        p.outputs = d_out, p.scratch = d_scratch;
        CUDA_OK(gpu::attention_fp16(p));
        const auto got = download(d_out, static_cast<std::size_t>(regions) * group * d);
        std::vector<double> ref;
        const std::vector<double> ones(static_cast<std::size_t>(n), 1.0);
        for (int r = 0; r < regions; ++r) {
          std::vector<const float*> ks, vs;
          for (int t = 0; t < n; ++t) ks.push_back(kf.data() + (static_cast<std::size_t>(r) * n + t) * d), vs.push_back(vf.data() + (static_cast<std::size_t>(r) * n + t) * d);
          for (int h = 0; h < group; ++h) {
            const auto o = attention_ref(ks, vs, q.data() + (static_cast<std::size_t>(r) * group + h) * d, d, p.scale, ones, ones);
            ref.insert(ref.end(), o.begin(), o.end());
          }
        }
        // fp32 throughout with __expf: ~1e-11 expected.
        EXPECT_LT(test::nmse(got, ref), 1e-8);
        for (void* ptr : std::initializer_list<void*>{d_k, d_v, d_q, d_out, d_scratch}) cudaFree(ptr);
      }
}

TEST(GpuSoftmax, RowsMatchDouble) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (int n : {1, 3, 257, 4097}) {
    const int rows = 5;
    std::mt19937_64 rng(n);
    std::normal_distribution<float> normal;
    std::vector<float> s(static_cast<std::size_t>(rows) * n);
    for (auto& x : s) x = normal(rng) * 10.0f;
    float *d_s = upload(s), *d_p = nullptr;
    __half* d_h = nullptr;
    CUDA_OK(cudaMalloc(&d_p, sizeof(float) * s.size()));
    CUDA_OK(cudaMalloc(&d_h, sizeof(__half) * s.size()));
    CUDA_OK(gpu::softmax_rows(d_s, rows, n, 0.125f, d_p, d_h));
    const auto p = download(d_p, s.size());
    const auto h = download(d_h, s.size());
    for (int r = 0; r < rows; ++r) {
      double m = -INFINITY, l = 0;
      for (int t = 0; t < n; ++t) m = std::max(m, 0.125 * s[static_cast<std::size_t>(r) * n + t]);
      for (int t = 0; t < n; ++t) l += std::exp(0.125 * s[static_cast<std::size_t>(r) * n + t] - m);
      for (int t = 0; t < n; ++t) {
        const std::size_t i = static_cast<std::size_t>(r) * n + t;
        const double ref = std::exp(0.125 * s[i] - m) / l;
        EXPECT_NEAR(p[i], ref, 1e-6 * ref + 1e-12);                      // fp32, __expf
        EXPECT_NEAR(__half2float(h[i]), ref, 1e-3 * ref + 6e-8);          // fp16 rounding (+ subnormal step)
      }
    }
    for (void* ptr : std::initializer_list<void*>{d_s, d_p, d_h}) cudaFree(ptr);
  }
}

// The GQA-group axis (1..8) of both tensor-core GEMVs, including the two-pass B layout beyond 4 heads.
TEST(GpuGemvGroups, EveryGroupMatchesDouble) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (int d : {64, 128})
    for (int group = 1; group <= 8; ++group)
      for (bool keys : {true, false}) {
        SCOPED_TRACE(std::string(keys ? "scores" : "outputs") + " d " + std::to_string(d) + " group " + std::to_string(group));
        const int regions = 2, n = keys ? 301 : 320, splits = 3;
        const TensorSpec t = keys ? quantized(Mode::sym, 3, GroupAxis::channel, 32) : quantized(Mode::hybrid, 2, GroupAxis::token, 32);
        std::mt19937_64 rng(d * 10 + group);
        std::normal_distribution<float> normal;
        std::vector<float> rows(static_cast<std::size_t>(regions) * n * d);
        for (auto& x : rows) x = round_to_half(normal(rng));
        PackedPair pair(t, rows, regions, n, d);
        std::vector<float> vec(static_cast<std::size_t>(regions) * group * (keys ? d : n));
        for (auto& x : vec) x = keys ? normal(rng) : std::fabs(normal(rng)) / n;
        float* d_vec = upload(vec);
        std::vector<float> got;
        if (keys) {
          float* d_out = nullptr;
          CUDA_OK(cudaMalloc(&d_out, sizeof(float) * regions * group * n));
          CUDA_OK(gpu::scores_inner({pair.cache.dev, d_vec, group, d_out, nullptr, gpu::GemvKernel::tensor_cores}));
          got = download(d_out, static_cast<std::size_t>(regions) * group * n);
          cudaFree(d_out);
        } else {
          const test::OutputsRun run(pair.cache.dev, d_vec, group, splits, gpu::GemvKernel::tensor_cores);
          CUDA_OK(run.status);
          got = run.host();
        }
        std::vector<double> ref;
        for (int r = 0; r < regions; ++r)
          for (int h = 0; h < group; ++h)
            for (int i = 0; i < (keys ? n : d); ++i) {
              double sum = 0;
              for (int j = 0; j < (keys ? d : n); ++j) {
                const int t = keys ? i : j, c = keys ? j : i;
                sum += double(vec[(static_cast<std::size_t>(r) * group + h) * (keys ? d : n) + j]) * pair.dequantized[(static_cast<std::size_t>(r) * n + t) * d + c];
              }
              ref.push_back(sum);
            }
        EXPECT_LT(test::nmse(got, ref), 1e-6);
        cudaFree(d_vec);
      }
}

TEST(GpuAttention, UnsupportedShapesAreErrorsNotCrashes) {
  gpu::AttentionParams p;
  p.keys.shape.channel_axis = true;
  p.values.shape.channel_axis = false;
  p.keys.shape.bits = 8;  // no fused kernel for 8-bit keys
  p.values.shape.bits = 2;
  EXPECT_EQ(gpu::attention_inner(p), cudaErrorInvalidValue);
  p.keys.shape.bits = 3;
  p.values.shape.tokens = 64;  // keys and values of different lengths
  EXPECT_EQ(gpu::attention_inner(p), cudaErrorInvalidValue);
  EXPECT_EQ(gpu::attention_outer(p), cudaErrorInvalidValue);  // inner layouts
  gpu::AttentionParams o;
  o.keys.shape.channel_axis = false;
  o.values.shape.channel_axis = true;
  o.keys.shape.tokens = o.values.shape.tokens = 64;
  EXPECT_EQ(gpu::attention_outer(o), cudaErrorInvalidValue);  // quantized tokens and no scores_scratch
  gpu::Fp16AttentionParams f;
  f.head_dim = 96;
  EXPECT_EQ(gpu::attention_fp16(f), cudaErrorInvalidValue);
  EXPECT_EQ(gpu::softmax_rows(nullptr, 1, 0, 1.0f, nullptr, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvq
