// GPU packer and GEMVs against the CPU reference (ThunderKittens style: each device
// function paired with a CPU reference, template parameters swept, seeds fixed).
// Skipped where no CUDA device exists.
#include <gtest/gtest.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <limits>
#include <random>

#include "core/half.h"
#include "cpu_ref/packed_region.h"
#include "gpu/device.h"
#include "gpu/gemv.h"
#include "gpu/outputs_outer_mma.h"
#include "gpu/scores_outer_mma.h"
#include "gpu/pack.h"
#include "gpu/rotate.h"
#include "cpu_ref/tensor_cache.h"
#include "gpu_fixtures.h"

namespace kvq {
namespace {

using test::DeviceCache;
using test::download;
using test::OutputsRun;
using test::upload;

struct Case {
  Mode mode;
  int bits;
  bool channel;
  int group;
  bool fp16;
  bool twos;
  HybridAsymBits hybrid_bits;
  int head_dim;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (Mode mode : {Mode::sym, Mode::asym, Mode::hybrid})
    for (int bits : {2, 3, 4, 8})
      for (bool channel : {true, false})
        for (int group : {16, 32, 64, 128})
          for (int d : {64, 128}) {
            if (channel && d % group != 0) continue;
            out.push_back({mode, bits, channel, group, true, false, HybridAsymBits::b_minus_1, d});
            if (mode != Mode::asym) out.push_back({mode, bits, channel, group, true, true, HybridAsymBits::b, d});
            if (group == 32) out.push_back({mode, bits, channel, group, false, false, HybridAsymBits::b_minus_1, d});
          }
  return out;
}

// rows x n probabilities e^(2.5 x), x drawn from `normal`, each row normalized to sum 1 in double:
// spread over about e^(+-7.5), as attention's are.
std::vector<float> spread_probs(std::size_t rows, int n, std::mt19937_64& rng, std::normal_distribution<float>& normal) {
  std::vector<float> probs(rows * n);
  for (std::size_t row = 0; row < rows; ++row) {
    double sum = 0;
    for (int t = 0; t < n; ++t) sum += probs[row * n + t] = std::exp(2.5f * normal(rng));
    for (int t = 0; t < n; ++t) probs[row * n + t] = static_cast<float>(probs[row * n + t] / sum);
  }
  return probs;
}

using GpuKernels = test::GpuSweep<Case>;

TEST_P(GpuKernels, PackerIsBitIdenticalAndGemvMatchesDouble) {
  const Case k = GetParam();
  TensorSpec spec = test::swept_spec(k.mode, k.bits, k.channel, k.group, k.fp16);
  spec.sym_levels = k.twos ? SymLevels::twos : SymLevels::signmag;
  spec.hybrid_asym_bits = k.hybrid_bits;
  // Both GEMVs take a lane-owned kernel for one head per kv head (outputs: on int8 tensor cores) and
  // another for GQA groups (gpu/gemv.cu): every case runs both, four heads here and one head (with
  // the 3-bit cases' token scales) below. GpuGemvGroups covers 1..8 heads.
  const int d = k.head_dim, regions = 3, group = 4;
  const std::vector<int> lengths = k.channel ? std::vector<int>{1, 3, 31, 33, 257, 4097}
                                             : std::vector<int>{k.group, 3 * k.group, 4096 / k.group * k.group + k.group};
  std::mt19937_64 rng(1000 + k.bits * 31 + k.group + d);
  std::normal_distribution<float> normal;
  for (int n : lengths) {
    SCOPED_TRACE("tokens " + std::to_string(n));
    std::vector<float> rows(static_cast<std::size_t>(regions) * n * d);
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = round_to_half(normal(rng) * ((i % d) == 5 ? 20.0f : 1.0f));
    gpu::RegionShape s;
    s.tokens = n;
    s.head_dim = d;
    s.bits = k.bits;
    s.group_size = k.group;
    s.channel_axis = k.channel;
    s.mode = static_cast<gpu::GroupMode>(k.mode == Mode::sym ? 0 : k.mode == Mode::asym ? 1 : 2);
    s.twos = k.twos;
    s.hybrid_asym_bits = k.hybrid_bits == HybridAsymBits::b ? k.bits : k.bits - 1;
    s.meta_fp16 = k.fp16;
    const std::size_t meta = k.fp16 ? 2 : 4;
    DeviceCache cache(s, regions);
    const gpu::DeviceRegions& dev = cache.dev;
    float* d_rows = upload(rows);
    CUDA_OK(gpu::pack({d_rows, dev}));
    CUDA_OK(cudaDeviceSynchronize());
    const auto codes = download(dev.codes, regions * s.code_words());
    const auto scales = download(static_cast<std::uint8_t*>(dev.scales), meta * regions * s.groups());
    const auto zeros = download(static_cast<std::uint8_t*>(dev.zeros), meta * regions * s.groups());
    const auto offsets = download(dev.zero_offset, regions);
    const auto bases = download(dev.zero_base, regions * s.zero_blocks());

    // Queries and probabilities for the GEMVs.
    std::vector<float> q(static_cast<std::size_t>(regions) * group * d), probs(static_cast<std::size_t>(regions) * group * n);
    for (auto& x : q) x = normal(rng);
    for (auto& x : probs) x = std::fabs(normal(rng)) / n;
    // The outer-layout product over the same region (outputs for channel-axis values, scores for
    // token-axis keys) with another head count (every bucket of 1..8 across the sweep) and, for 3-bit
    // cases, token scales.
    const int outer_group = 1 + (k.bits + k.group / 16 + d / 64 + (k.twos ? 3 : 0)) % 8;
    std::vector<float> outer_w(static_cast<std::size_t>(regions) * outer_group * (k.channel ? n : d)), sigma;
    for (auto& x : outer_w) x = k.channel ? std::fabs(normal(rng)) / n : normal(rng);
    if (k.bits == 3) {
      sigma.resize(static_cast<std::size_t>(regions) * n);
      for (auto& x : sigma) x = 0.5f + std::fabs(normal(rng));
    }
    // Both outer kernels: tensor cores (automatic, where supported: bits 2/4/8, fp16 metadata, up to 4
    // heads) and CUDA cores.
    std::vector<float> outer_out, outer_cuda_cores;
    {
      float* d_w = upload(outer_w);
      float* d_sigma = sigma.empty() ? nullptr : upload(sigma);
      if (k.channel) {
        const OutputsRun run(dev, d_w, outer_group, 3, gpu::GemvKernel::automatic, d_sigma);
        CUDA_OK(run.status);
        outer_out = run.host();
        const OutputsRun cuda_cores(dev, d_w, outer_group, 3, gpu::GemvKernel::cuda_cores, d_sigma);
        CUDA_OK(cuda_cores.status);
        outer_cuda_cores = cuda_cores.host();
      } else {
        float* d_scores = nullptr;
        const std::size_t count = static_cast<std::size_t>(regions) * outer_group * n;
        CUDA_OK(cudaMalloc(&d_scores, sizeof(float) * count));
        CUDA_OK(gpu::scores_outer({dev, d_w, outer_group, d_scores, d_sigma, gpu::GemvKernel::automatic}));
        outer_out = download(d_scores, count);
        CUDA_OK(gpu::scores_outer({dev, d_w, outer_group, d_scores, d_sigma, gpu::GemvKernel::cuda_cores}));
        outer_cuda_cores = download(d_scores, count);
        cudaFree(d_scores);
      }
      cudaFree(d_w);
      cudaFree(d_sigma);
    }
    // One query head per kv head: the lane-owned kernels (CUDA cores for groups of 16).
    std::vector<float> q1, lane_out;
    {
      q1.resize(static_cast<std::size_t>(regions) * (k.channel ? d : n));
      for (auto& x : q1) x = k.channel ? normal(rng) : std::fabs(normal(rng)) / n;
      float* d_q1 = upload(q1);
      float* d_sigma = sigma.empty() ? nullptr : upload(sigma);
      if (k.channel) {
        float* d_scores = nullptr;
        CUDA_OK(cudaMalloc(&d_scores, sizeof(float) * regions * n));
        CUDA_OK(gpu::scores_inner({dev, d_q1, 1, d_scores, d_sigma, gpu::GemvKernel::tensor_cores}));
        lane_out = download(d_scores, static_cast<std::size_t>(regions) * n);
        cudaFree(d_scores);
      } else {
        const OutputsRun run(dev, d_q1, 1, 3, gpu::GemvKernel::tensor_cores, d_sigma);
        CUDA_OK(run.status);
        lane_out = run.host();
      }
      cudaFree(d_q1);
      cudaFree(d_sigma);
    }
    std::vector<float> gpu_out, cuda_core_out;
    if (k.channel) {
      float* d_q = upload(q);
      float* d_sigma = sigma.empty() ? nullptr : upload(sigma);
      float* d_scores = nullptr;
      CUDA_OK(cudaMalloc(&d_scores, sizeof(float) * regions * group * n));
      // Both kernels on the same input: tensor cores (CUDA cores where unsupported), CUDA cores; the
      // 3-bit cases with token scales.
      CUDA_OK(gpu::scores_inner({dev, d_q, group, d_scores, d_sigma, gpu::GemvKernel::tensor_cores}));
      CUDA_OK(cudaDeviceSynchronize());
      gpu_out = download(d_scores, static_cast<std::size_t>(regions) * group * n);
      CUDA_OK(gpu::scores_inner({dev, d_q, group, d_scores, d_sigma, gpu::GemvKernel::cuda_cores}));
      cuda_core_out = download(d_scores, static_cast<std::size_t>(regions) * group * n);
      cudaFree(d_q);
      cudaFree(d_sigma);
      cudaFree(d_scores);
    } else {
      float* d_p = upload(probs);
      float* d_sigma = sigma.empty() ? nullptr : upload(sigma);
      // Both kernels on the same input, as for the scores (3-bit cases with token scales).
      const OutputsRun tensor(dev, d_p, group, 5, gpu::GemvKernel::tensor_cores, d_sigma);
      CUDA_OK(tensor.status);
      gpu_out = tensor.host();
      const OutputsRun cuda_cores(dev, d_p, group, 5, gpu::GemvKernel::cuda_cores, d_sigma);
      CUDA_OK(cuda_cores.status);
      cuda_core_out = cuda_cores.host();
      cudaFree(d_p);
      cudaFree(d_sigma);
    }

    for (int r = 0; r < regions; ++r) {
      cpu::PackedRegion cpu_region(spec, d);
      cpu_region.append(rows.data() + static_cast<std::size_t>(r) * n * d, n);
      // Codes, scales (mode bit included), zero points and zero_base: bit for bit.
      const auto cw = cpu_region.codes();
      ASSERT_TRUE(std::equal(cw.begin(), cw.end(), codes.begin() + r * s.code_words())) << "codes, region " << r;
      const std::uint8_t* gs = scales.data() + meta * r * s.groups();
      const void* cs = k.fp16 ? static_cast<const void*>(cpu_region.scales().half_bits().data())
                              : static_cast<const void*>(cpu_region.scales().float_bits().data());
      ASSERT_EQ(std::memcmp(gs, cs, meta * s.groups()), 0) << "scales, region " << r;
      const std::size_t nz = cpu_region.zeros().size();
      const std::size_t z0 = k.mode == Mode::hybrid ? offsets[r] : (k.mode == Mode::asym ? r * s.groups() : 0);
      const void* cz = k.fp16 ? static_cast<const void*>(cpu_region.zeros().half_bits().data())
                              : static_cast<const void*>(cpu_region.zeros().float_bits().data());
      if (nz) {
        ASSERT_EQ(std::memcmp(zeros.data() + meta * z0, cz, meta * nz), 0) << "zeros, region " << r;
      }
      if (k.mode == Mode::hybrid) {
        const auto& zb = cpu_region.zero_base();
        ASSERT_TRUE(std::equal(zb.begin(), zb.end(), bases.begin() + r * s.zero_blocks())) << "zero_base, region " << r;
      }
      // GEMV against double precision over the CPU's dequantized region.
      std::vector<float> x_hat(static_cast<std::size_t>(n) * d);
      cpu_region.dequantize(x_hat.data());
      const auto sig = [&](int t) { return sigma.empty() ? 1.0 : double(sigma[static_cast<std::size_t>(r) * n + t]); };
      double num = 0, den = 0, num_cc = 0;
      for (int h = 0; h < group; ++h) {
        if (k.channel) {
          for (int t = 0; t < n; ++t) {
            double ref = 0;
            for (int c = 0; c < d; ++c) ref += double(q[(r * group + h) * d + c]) * x_hat[static_cast<std::size_t>(t) * d + c];
            ref *= sig(t);
            const double got = gpu_out[(static_cast<std::size_t>(r) * group + h) * n + t];
            const double got_cc = cuda_core_out[(static_cast<std::size_t>(r) * group + h) * n + t];
            num += (got - ref) * (got - ref);
            num_cc += (got_cc - ref) * (got_cc - ref);
            den += ref * ref;
          }
        } else {
          for (int c = 0; c < d; ++c) {
            double ref = 0;
            for (int t = 0; t < n; ++t) ref += double(probs[(static_cast<std::size_t>(r) * group + h) * n + t]) * sig(t) * x_hat[static_cast<std::size_t>(t) * d + c];
            const double got = gpu_out[(static_cast<std::size_t>(r) * group + h) * d + c];
            const double got_cc = cuda_core_out[(static_cast<std::size_t>(r) * group + h) * d + c];
            num += (got - ref) * (got - ref);
            num_cc += (got_cc - ref) * (got_cc - ref);
            den += ref * ref;
          }
        }
      }
      // fp32 accumulation in another order and the zero-point form: ~1e-12 expected. The GQA kernels
      // take q as 16-bit fixed point per head and 32-channel chunk (gpu/scores_heads.cu) and p per head
      // and 128-token stretch (gpu/head_tiles.cuh), each off by <= 2^-16 of the largest: ~1e-10. 1e-6
      // is the bound.
      EXPECT_LT(num / std::max(den, 1e-30), 1e-6) << "region " << r;
      EXPECT_LT(num_cc / std::max(den, 1e-30), 1e-6) << "CUDA-core kernel, region " << r;
      {
        // Scores: head_dim 128 takes q as 16-bit fixed point per 32-channel chunk (gpu/key_bytes.cuh),
        // each entry off by <= 2^-16 of the chunk's largest: ~1e-10 expected; head_dim 64 the in-place
        // mantissa decode, which takes back a constant up to ~2^8 times a code's term
        // (gpu/mantissa_pairs.cuh): ~1e-12 expected. Outputs: the probabilities as 16-bit
        // fixed point per 128-token stretch (gpu/byte_planes.cuh), each off by <= 2^-16 of the
        // stretch's largest: ~1e-10 expected.
        double num1 = 0, den1 = 0;
        for (int i = 0; i < (k.channel ? n : d); ++i) {
          double ref = 0;
          if (k.channel) {
            for (int c = 0; c < d; ++c) ref += double(q1[static_cast<std::size_t>(r) * d + c]) * x_hat[static_cast<std::size_t>(i) * d + c];
            ref *= sig(i);
          } else {
            for (int t = 0; t < n; ++t) ref += double(q1[static_cast<std::size_t>(r) * n + t]) * sig(t) * x_hat[static_cast<std::size_t>(t) * d + i];
          }
          const double e = lane_out[static_cast<std::size_t>(r) * (k.channel ? n : d) + i] - ref;
          num1 += e * e;
          den1 += ref * ref;
        }
        EXPECT_LT(num1 / std::max(den1, 1e-30), 1e-6) << "one query head, region " << r;
      }
      // Outer layout: token scales multiply each token's row.
      double num_outer = 0, den_outer = 0, num_cuda_cores = 0;
      for (int h = 0; h < outer_group; ++h) {
        const float* wv = outer_w.data() + (static_cast<std::size_t>(r) * outer_group + h) * (k.channel ? n : d);
        for (int i = 0; i < (k.channel ? d : n); ++i) {
          double ref = 0;
          if (k.channel) {
            for (int t = 0; t < n; ++t) ref += double(wv[t]) * sig(t) * x_hat[static_cast<std::size_t>(t) * d + i];
          } else {
            for (int c = 0; c < d; ++c) ref += double(wv[c]) * x_hat[static_cast<std::size_t>(i) * d + c];
            ref *= sig(i);
          }
          const std::size_t at = (static_cast<std::size_t>(r) * outer_group + h) * (k.channel ? d : n) + i;
          const double e = outer_out[at] - ref;
          num_outer += e * e;
          den_outer += ref * ref;
          num_cuda_cores += (outer_cuda_cores[at] - ref) * (outer_cuda_cores[at] - ref);
        }
      }
      // The unit-code form (1 + f/2^b, the 1 taken back per group) cancels at most b bits: ~1e-12 expected.
      // The outer tensor-core kernels keep ~22 bits of p sigma |s| and q |s| (B's fp16 hi + lo parts; for
      // one head's 2-bit keys, 24-bit fixed point per group row).
      EXPECT_LT(num_outer / std::max(den_outer, 1e-30), 1e-6) << "outer layout, " << outer_group << " heads, region " << r;
      EXPECT_LT(num_cuda_cores / std::max(den_outer, 1e-30), 1e-6) << "outer layout on CUDA cores, " << outer_group << " heads, region " << r;
    }
    cudaFree(d_rows);
  }
}

std::string name(const Case& k) {
  return std::string(to_string(k.mode)) + std::to_string(k.bits) + (k.channel ? "_channel" : "_token") + "_g" + std::to_string(k.group) +
         "_d" + std::to_string(k.head_dim) + (k.fp16 ? "_fp16" : "_fp32") + (k.twos ? "_twos_hb" : "_signmag_hb1");
}
void PrintTo(const Case& k, std::ostream* os) { *os << name(k); }

INSTANTIATE_TEST_SUITE_P(Sweep, GpuKernels, ::testing::ValuesIn(cases()), [](const auto& info) { return name(info.param); });

TEST(GpuFp16, BaselinesMatchDouble) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (int d : {64, 128}) {
    for (int n : {1, 3, 33, 4097}) {
      const int regions = 2, group = 3, splits = 4;
      std::mt19937_64 rng(n + d);
      std::normal_distribution<float> normal;
      std::vector<__half> cache(static_cast<std::size_t>(regions) * n * d);
      std::vector<float> values(cache.size()), q(static_cast<std::size_t>(regions) * group * d), p(static_cast<std::size_t>(regions) * group * n);
      for (std::size_t i = 0; i < cache.size(); ++i) cache[i] = __float2half(values[i] = round_to_half(normal(rng)));
      for (auto& x : q) x = normal(rng);
      for (auto& x : p) x = std::fabs(normal(rng)) / n;
      __half* d_cache = upload(cache);
      float *d_q = upload(q), *d_p = upload(p), *d_scores, *d_out, *d_partial;
      CUDA_OK(cudaMalloc(&d_scores, sizeof(float) * regions * group * n));
      CUDA_OK(cudaMalloc(&d_out, sizeof(float) * regions * group * d));
      CUDA_OK(cudaMalloc(&d_partial, sizeof(float) * splits * regions * group * d));
      gpu::Fp16Params sp{d_cache, regions, n, d, group, d_q, d_scores, nullptr, 1};
      CUDA_OK(gpu::scores_fp16(sp));
      gpu::Fp16Params op{d_cache, regions, n, d, group, d_p, d_out, d_partial, splits};
      CUDA_OK(gpu::outputs_fp16(op));
      const auto scores = download(d_scores, static_cast<std::size_t>(regions) * group * n);
      const auto out = download(d_out, static_cast<std::size_t>(regions) * group * d);
      double num = 0, den = 0, onum = 0, oden = 0;
      for (int r = 0; r < regions; ++r)
        for (int h = 0; h < group; ++h) {
          for (int t = 0; t < n; ++t) {
            double ref = 0;
            for (int c = 0; c < d; ++c) ref += double(q[(r * group + h) * d + c]) * values[(static_cast<std::size_t>(r) * n + t) * d + c];
            const double e = scores[(static_cast<std::size_t>(r) * group + h) * n + t] - ref;
            num += e * e, den += ref * ref;
          }
          for (int c = 0; c < d; ++c) {
            double ref = 0;
            for (int t = 0; t < n; ++t) ref += double(p[(static_cast<std::size_t>(r) * group + h) * n + t]) * values[(static_cast<std::size_t>(r) * n + t) * d + c];
            const double e = out[(static_cast<std::size_t>(r) * group + h) * d + c] - ref;
            onum += e * e, oden += ref * ref;
          }
        }
      EXPECT_LT(num / den, 1e-10) << d << " " << n;
      EXPECT_LT(onum / oden, 1e-10) << d << " " << n;
      for (void* ptr : std::initializer_list<void*>{d_cache, d_q, d_p, d_scores, d_out, d_partial}) cudaFree(ptr);
    }
  }
}


// The rotation family on the device (issue 7): rotate_rows equals cpu::scale_and_rotate bit for bit
// (token scales included), and the GEMVs with rotated queries and token scales match double
// precision over the CPU cache's dequantized (untransformed) tensor.
TEST(GpuRotation, TransformIsBitIdenticalAndFoldsIntoTheGemvs) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int regions = 2, group = 3;  // two kv heads of one layer, so omni spans both
  for (int d : {64, 128})
    for (Rotation kind : {Rotation::hadamard, Rotation::random})
      for (TokenScale scale : {TokenScale::none, TokenScale::head, TokenScale::omni})
        for (bool keys : {true, false})
          for (int n : keys ? std::vector<int>{1, 33, 257} : std::vector<int>{32, 288}) {
            SCOPED_TRACE(std::string(to_string(kind)) + " " + to_string(scale) + (keys ? " keys" : " values") +
                         " d=" + std::to_string(d) + " n=" + std::to_string(n));
            TensorSpec spec;
            spec.mode = keys ? Mode::sym : Mode::hybrid;
            spec.bits = keys ? 3 : 2;
            spec.group_axis = keys ? GroupAxis::channel : GroupAxis::token;
            spec.flush = keys ? 1 : 32;
            spec.rotation = kind;
            spec.token_scale = scale;
            std::mt19937_64 rng(77 + n + d);
            std::normal_distribution<float> normal;
            std::vector<float> rows(static_cast<std::size_t>(regions) * n * d);
            for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = round_to_half(normal(rng) * ((i % d) == 7 ? 15.0f : 1.0f));
            const std::vector<float> omni = cpu::omni_token_scale({rows.data(), rows.data() + static_cast<std::size_t>(n) * d}, n, d);
            std::vector<float> omni_rows(omni);
            omni_rows.insert(omni_rows.end(), omni.begin(), omni.end());
            const std::uint64_t stream = rotation_stream(0, keys ? TensorKind::key : TensorKind::value);
            const Rotator rotator(kind, d, stream);

            float* d_rows = upload(rows);
            float* d_signs = upload(rotator.signs());
            float* d_omni = upload(omni_rows);
            float* d_sigma = nullptr;
            CUDA_OK(cudaMalloc(&d_sigma, sizeof(float) * regions * n));
            gpu::RotateParams rp;
            rp.rows = d_rows;
            rp.count = static_cast<long long>(regions) * n;
            rp.head_dim = d;
            rp.signs = d_signs;
            rp.scale = static_cast<gpu::TokenScaleMode>(static_cast<int>(scale));
            rp.omni_scale = d_omni;
            rp.token_scale = d_sigma;
            CUDA_OK(gpu::rotate_rows(rp));
            const auto rotated = download(d_rows, rows.size());
            const auto sigma = download(d_sigma, static_cast<std::size_t>(regions) * n);
            std::vector<cpu::TensorCache> caches;
            for (int r = 0; r < regions; ++r) {
              std::vector<float> want_sigma;
              const float* x = rows.data() + static_cast<std::size_t>(r) * n * d;
              const auto want = cpu::scale_and_rotate(spec, rotator, x, n, d, omni.data(), &want_sigma);
              ASSERT_EQ(std::memcmp(want.data(), rotated.data() + static_cast<std::size_t>(r) * n * d, want.size() * 4), 0)
                  << "rotated rows, region " << r;
              if (scale != TokenScale::none) {
                ASSERT_EQ(std::memcmp(want_sigma.data(), sigma.data() + static_cast<std::size_t>(r) * n, n * 4), 0) << "scales";
              }
              caches.emplace_back(spec, d, 0, 0, false, stream);
              caches.back().prefill(x, n, omni.data());
            }
            // Pack the transformed rows on the device, then the GEMV with the token scales.
            gpu::RegionShape s;
            s.tokens = n;
            s.head_dim = d;
            s.bits = spec.bits;
            s.group_size = 32;
            s.channel_axis = keys;
            s.mode = keys ? gpu::GroupMode::sym : gpu::GroupMode::hybrid;
            DeviceCache cache(s, regions);
            CUDA_OK(gpu::pack({d_rows, cache.dev}));
            const float* d_scale = scale == TokenScale::none ? nullptr : d_sigma;
            std::vector<float> w(static_cast<std::size_t>(regions) * group * (keys ? d : n));
            for (auto& x : w) x = keys ? normal(rng) : std::fabs(normal(rng)) / n;
            float* d_w = upload(w);
            std::vector<float> got;
            if (keys) {
              // Queries rotated on the device like the keys (no token scale).
              gpu::RotateParams qp;
              qp.rows = d_w;
              qp.count = static_cast<long long>(regions) * group;
              qp.head_dim = d;
              qp.signs = d_signs;
              CUDA_OK(gpu::rotate_rows(qp));
              float* d_scores = nullptr;
              CUDA_OK(cudaMalloc(&d_scores, sizeof(float) * regions * group * n));
              gpu::ScoresParams sp{cache.dev, d_w, group, d_scores, d_scale};
              CUDA_OK(gpu::scores_inner(sp));
              got = download(d_scores, static_cast<std::size_t>(regions) * group * n);
              cudaFree(d_scores);
            } else {
              const OutputsRun run(cache.dev, d_w, group, 3, gpu::GemvKernel::automatic, d_scale);
              CUDA_OK(run.status);
              // Outputs of rotated values are rotated: take them back.
              gpu::RotateParams back;
              back.rows = run.out;
              back.count = static_cast<long long>(regions) * group;
              back.head_dim = d;
              back.signs = d_signs;
              back.inverse = true;
              CUDA_OK(gpu::rotate_rows(back));
              got = run.host();
            }
            double num = 0, den = 0;
            for (int r = 0; r < regions; ++r) {
              std::vector<float> x_hat(static_cast<std::size_t>(n) * d);
              caches[r].dequantize(x_hat.data());
              for (int h = 0; h < group; ++h) {
                const float* wv = w.data() + (static_cast<std::size_t>(r) * group + h) * (keys ? d : n);
                for (int i = 0; i < (keys ? n : d); ++i) {
                  double ref = 0;
                  if (keys) {
                    for (int c = 0; c < d; ++c) ref += double(wv[c]) * x_hat[static_cast<std::size_t>(i) * d + c];
                  } else {
                    for (int t = 0; t < n; ++t) ref += double(wv[t]) * x_hat[static_cast<std::size_t>(t) * d + i];
                  }
                  const double e = got[(static_cast<std::size_t>(r) * group + h) * (keys ? n : d) + i] - ref;
                  num += e * e;
                  den += ref * ref;
                }
              }
            }
            // As the GEMV sweep, plus the rotation's fp32 rounding on q and the output (~1e-13).
            EXPECT_LT(num / std::max(den, 1e-30), 1e-6);
            for (void* p : std::initializer_list<void*>{d_rows, d_signs, d_omni, d_sigma, d_w}) cudaFree(p);
          }
}

// The outer values' tensor-core kernel over a long sequence with softmax-like probabilities (six orders
// of magnitude) and one sequence split, so that each warp runs 8k tokens: its B range only ever grows
// and its accumulators are read out every 8 stretches. Both outer kernels against double precision;
// the tensor-core kernel twice: with the packer's arrays (region 0's start on 16 bytes, so its whole
// stretches are copied as fixed 16-byte pieces; region 1's scales start 8 bytes off), and with the
// scales array moved 2 bytes (region 0's 2 bytes off 16, region 1's 10), copied from where they start.
// One head takes the int8 form, whose B keeps 22 bits below the warp's largest p sigma |s|, so the
// smallest probabilities lose bits the fp16 form keeps: NMSE up to 2.6e-9 on the H100 (fp16 form:
// 1e-10), far inside the GEMVs' 1e-6.
TEST(GpuOuterValues, LongSequencesMatchDouble) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int regions = 2, d = 128, n = 32768 + 5;
  std::mt19937_64 rng(4242);
  std::normal_distribution<float> normal;
  std::vector<float> rows(static_cast<std::size_t>(regions) * n * d);
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = round_to_half(normal(rng) * ((i % d) == 7 ? 15.0f : 1.0f) + 0.5f);
  for (Mode mode : {Mode::sym, Mode::asym, Mode::hybrid})
    for (int heads : {1, 4}) {
      SCOPED_TRACE(std::string(to_string(mode)) + ", " + std::to_string(heads) + " heads");
      const TensorSpec spec = test::swept_spec(mode, 2, true, 32, true);
      test::PackedPair pair(spec, rows, regions, n, d);
      const std::vector<float> probs = spread_probs(static_cast<std::size_t>(regions) * heads, n, rng, normal);
      const test::ScalesMoved moved(pair.cache.dev, 2);
      const gpu::DeviceRegions& off = moved.dev;
      ASSERT_TRUE(gpu::outputs_outer_mma_supported(off, heads));
      float* d_probs = upload(probs);
      const OutputsRun tensor_cores(off, d_probs, heads, 1, gpu::GemvKernel::automatic);
      const OutputsRun on16(pair.cache.dev, d_probs, heads, 1, gpu::GemvKernel::automatic);
      const OutputsRun cuda_cores(pair.cache.dev, d_probs, heads, 1, gpu::GemvKernel::cuda_cores);
      CUDA_OK(tensor_cores.status);
      CUDA_OK(on16.status);
      CUDA_OK(cuda_cores.status);
      const std::vector<float> a = tensor_cores.host(), a16 = on16.host(), b = cuda_cores.host();
      std::vector<double> ref(a.size());
      for (int r = 0; r < regions; ++r)
        for (int h = 0; h < heads; ++h)
          for (int t = 0; t < n; ++t) {
            const double pt = probs[(static_cast<std::size_t>(r) * heads + h) * n + t];
            const float* x = pair.dequantized.data() + (static_cast<std::size_t>(r) * n + t) * d;
            double* out = ref.data() + (static_cast<std::size_t>(r) * heads + h) * d;
            for (int c = 0; c < d; ++c) out[c] += pt * x[c];
          }
      const double tc = test::nmse(a, ref), tc16 = test::nmse(a16, ref), cc = test::nmse(b, ref);
      std::printf("    outer values, %d tokens: NMSE tensor cores %.3g (scales on 16 bytes %.3g), CUDA cores %.3g\n", n, tc, tc16, cc);
      EXPECT_LT(tc, 1e-6);
      EXPECT_LT(tc16, 1e-6);
      EXPECT_LT(cc, 1e-6);
      cudaFree(d_probs);
    }
}

// The one-head InnerQ values kernel (gpu/outputs_mma.cu, which outputs_inner takes for these aligned
// whole-group shapes) over long runs: with one or two splits each warp streams 4 to 33 stretches
// through its ring of cp.async stages, so the ring wraps many times, and the last stretch is partly
// past the end (32.75 and 128.5 stretches). Bits 2/3/4/8, each mode, groups of 32 and 64, fp16 and
// fp32 metadata, token scales on every other run, against double.
TEST(GpuInnerValues, LongRunsMatchDouble) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int regions = 2, d = 128;
  std::mt19937_64 rng(5151);
  std::normal_distribution<float> normal;
  double worst = 0;
  int run = 0;
  for (int n : {4192, 16448}) {
    std::vector<float> rows(static_cast<std::size_t>(regions) * n * d);
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = round_to_half(normal(rng) * ((i % d) == 9 ? 12.0f : 1.0f) + 0.25f);
    const std::vector<float> probs = spread_probs(regions, n, rng, normal);
    float* d_probs = upload(probs);
    for (Mode mode : {Mode::sym, Mode::asym, Mode::hybrid})
      for (int bits : {2, 3, 4, 8}) {
        const int group_size = bits == 4 && n % 64 == 0 ? 64 : 32;
        const bool fp16 = bits != 8;
        SCOPED_TRACE(std::string(to_string(mode)) + std::to_string(bits) + ", groups of " +
                     std::to_string(group_size) + ", " + std::to_string(n) + " tokens");
        const TensorSpec spec = test::swept_spec(mode, bits, false, group_size, fp16);
        test::PackedPair pair(spec, rows, regions, n, d);
        std::vector<float> sigma;
        if (run++ % 2) {
          sigma.resize(static_cast<std::size_t>(regions) * n);
          for (auto& x : sigma) x = 0.5f + std::fabs(normal(rng));
        }
        float* d_sigma = sigma.empty() ? nullptr : upload(sigma);
        std::vector<double> ref(static_cast<std::size_t>(regions) * d);
        for (int r = 0; r < regions; ++r)
          for (int t = 0; t < n; ++t) {
            const std::size_t rt = static_cast<std::size_t>(r) * n + t;
            const double w = double(probs[rt]) * (sigma.empty() ? 1.0 : sigma[rt]);
            const float* x = pair.dequantized.data() + rt * d;
            for (int c = 0; c < d; ++c) ref[static_cast<std::size_t>(r) * d + c] += w * x[c];
          }
        for (int splits : {1, 2}) {
          const OutputsRun got(pair.cache.dev, d_probs, 1, splits, gpu::GemvKernel::tensor_cores, d_sigma);
          CUDA_OK(got.status);
          const double e = test::nmse(got.host(), ref);
          worst = std::max(worst, e);
          // p as 16-bit fixed point per 128-token stretch (gpu/value_tiles.cuh), each off by <= 2^-16 of
          // the stretch's largest, and these p spread over e^(+-7.5), so most sit far below it: worst
          // 1.5e-8 on the H100; 1e-6 is the bound.
          EXPECT_LT(e, 1e-6) << splits << " splits";
        }
        cudaFree(d_sigma);
      }
    cudaFree(d_probs);
  }
  std::printf("    inner values, one head, %d runs: worst NMSE %.3g\n", 2 * run, worst);
}

// The outer keys' tensor-core kernel over every shape it takes: bits 2/4/8 (2-bit codes with one head
// on int8 tensor cores, the rest on fp16), groups of 16/32/128 tokens, head_dim 64/128, 1..4 heads,
// each mode. Token magnitudes spread over e^(+-4), so that group rows need their own B range; groups of
// 16 end on half a tile; every other run has token scales; scales start 2 bytes off 16 (the kernel
// copies them from where they start). Both outer kernels against double, the tensor cores' again with
// prefetch_first_units.
TEST(GpuOuterKeys, TensorCoresMatchDouble) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int regions = 2;
  std::mt19937_64 rng(5151);
  std::normal_distribution<float> normal;
  double worst_tc = 0, worst_cc = 0;
  int run = 0;
  for (int d : {64, 128})
    for (int group_size : {16, 32, 128}) {
      const int n = group_size * (2048 / group_size + 1);
      std::vector<float> rows(static_cast<std::size_t>(regions) * n * d);
      for (std::size_t t = 0; t < rows.size() / d; ++t) {
        const float mag = std::exp(1.3f * normal(rng));
        for (int c = 0; c < d; ++c) rows[t * d + c] = round_to_half(mag * (normal(rng) * (c == 7 ? 15.0f : 1.0f) + 0.5f));
      }
      for (Mode mode : {Mode::sym, Mode::asym, Mode::hybrid})
        for (int bits : {2, 4, 8}) {
          const TensorSpec spec = test::swept_spec(mode, bits, false, group_size, true);
          test::PackedPair pair(spec, rows, regions, n, d);
          const test::ScalesMoved moved(pair.cache.dev, 2);
          const gpu::DeviceRegions& off = moved.dev;
          for (int heads = 1; heads <= 4; ++heads, ++run) {
            SCOPED_TRACE(std::string(to_string(mode)) + std::to_string(bits) + ", group " +
                         std::to_string(group_size) + ", head_dim " + std::to_string(d) + ", " + std::to_string(heads) + " heads");
            ASSERT_TRUE(gpu::scores_outer_mma_supported(off, heads));
            std::vector<float> q(static_cast<std::size_t>(regions) * heads * d), sigma;
            for (auto& x : q) x = normal(rng);
            if (run % 2) {
              sigma.resize(static_cast<std::size_t>(regions) * n);
              for (auto& x : sigma) x = 0.5f + std::fabs(normal(rng));
            }
            float* d_q = upload(q);
            float* d_sigma = sigma.empty() ? nullptr : upload(sigma);
            float* d_scores = nullptr;
            const std::size_t count = static_cast<std::size_t>(regions) * heads * n;
            CUDA_OK(cudaMalloc(&d_scores, sizeof(float) * count));
            CUDA_OK(gpu::scores_outer({off, d_q, heads, d_scores, d_sigma, gpu::GemvKernel::automatic}));
            const std::vector<float> a = download(d_scores, count);
            // Again with each warp's first tiles prefetched, into NaNs: a hint that writes nothing, so
            // the same scores bit for bit.
            CUDA_OK(cudaMemset(d_scores, 0xff, sizeof(float) * count));
            CUDA_OK(gpu::scores_outer({off, d_q, heads, d_scores, d_sigma, gpu::GemvKernel::automatic, /*prefetch_first_units=*/true}));
            EXPECT_EQ(0, std::memcmp(a.data(), download(d_scores, count).data(), sizeof(float) * count)) << "prefetch_first_units changed the scores";
            CUDA_OK(gpu::scores_outer({pair.cache.dev, d_q, heads, d_scores, d_sigma, gpu::GemvKernel::cuda_cores}));
            const std::vector<float> b = download(d_scores, count);
            std::vector<double> ref(count);
            for (int r = 0; r < regions; ++r)
              for (int h = 0; h < heads; ++h)
                for (int t = 0; t < n; ++t) {
                  const float* x = pair.dequantized.data() + (static_cast<std::size_t>(r) * n + t) * d;
                  const float* qh = q.data() + (static_cast<std::size_t>(r) * heads + h) * d;
                  double v = 0;
                  for (int c = 0; c < d; ++c) v += double(qh[c]) * x[c];
                  ref[(static_cast<std::size_t>(r) * heads + h) * n + t] = sigma.empty() ? v : v * sigma[static_cast<std::size_t>(r) * n + t];
                }
            const double tc = test::nmse(a, ref), cc = test::nmse(b, ref);
            worst_tc = std::max(worst_tc, tc), worst_cc = std::max(worst_cc, cc);
            // 2-bit codes and one head: B is q |s| in 24-bit fixed point per group row (int8 tensor
            // cores), each entry within 2^-23 of the row's largest: ~1e-11 (a 16-bit B gave 3.9e-7 here,
            // its channel 7 being 15 times the others). Otherwise B's fp16 hi + lo keep ~22 bits: ~1e-12.
            // 1e-6 is the bound.
            EXPECT_LT(tc, 1e-6);
            EXPECT_LT(cc, 1e-6);
            for (void* ptr : std::initializer_list<void*>{d_q, d_sigma, d_scores}) cudaFree(ptr);
          }
        }
    }
  std::printf("    outer keys, %d runs: worst NMSE tensor cores %.3g, CUDA cores %.3g\n", run, worst_tc, worst_cc);
}

// scores_inner's one-head scores over `pair` ([regions][n] tokens of head_dim d, tensor cores) for a
// seeded q with one 20x channel, with seeded token scales if token_scales, against double on the
// dequantized rows: their NMSE (infinite where a CUDA call failed, which is reported as well). With
// prefetch_too, a second call with ScoresParams::prefetch_first_units must give the same scores bit
// for bit (the prefetch is a hint and writes nothing).
double one_head_scores_nmse(const test::PackedPair& pair, int regions, int n, int d, bool token_scales, std::mt19937_64& rng,
                            bool prefetch_too = false) {
  std::normal_distribution<float> normal;
  std::vector<float> q(static_cast<std::size_t>(regions) * d), sigma;
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = normal(rng) * ((i % d) == 40 ? 20.0f : 1.0f);
  if (token_scales) {
    sigma.resize(static_cast<std::size_t>(regions) * n);
    for (auto& x : sigma) x = 0.5f + std::fabs(normal(rng));
  }
  float* d_q = upload(q);
  float* d_sigma = sigma.empty() ? nullptr : upload(sigma);
  float* d_scores = nullptr;
  const std::size_t count = static_cast<std::size_t>(regions) * n;
  cudaError_t status = cudaMalloc(&d_scores, sizeof(float) * count);
  if (status == cudaSuccess) status = gpu::scores_inner({pair.cache.dev, d_q, 1, d_scores, d_sigma, gpu::GemvKernel::tensor_cores});
  EXPECT_EQ(status, cudaSuccess) << "scores_inner: " << cudaGetErrorString(status);
  const std::vector<float> got = status == cudaSuccess ? download(d_scores, count) : std::vector<float>();
  if (prefetch_too && status == cudaSuccess) {
    status = cudaMemset(d_scores, 0xff, sizeof(float) * count);  // NaNs: a score left unwritten cannot pass
    if (status == cudaSuccess) status = gpu::scores_inner({pair.cache.dev, d_q, 1, d_scores, d_sigma, gpu::GemvKernel::tensor_cores, /*prefetch_first_units=*/true});
    EXPECT_EQ(status, cudaSuccess) << "scores_inner with prefetch_first_units: " << cudaGetErrorString(status);
    if (status == cudaSuccess) {
      const std::vector<float> again = download(d_scores, count);
      EXPECT_EQ(0, std::memcmp(got.data(), again.data(), sizeof(float) * count)) << "prefetch_first_units changed the scores";
    }
  }
  for (void* ptr : std::initializer_list<void*>{d_q, d_sigma, d_scores}) cudaFree(ptr);
  if (status != cudaSuccess) return std::numeric_limits<double>::infinity();
  std::vector<double> ref(count);
  for (int r = 0; r < regions; ++r)
    for (int t = 0; t < n; ++t) {
      const float* x = pair.dequantized.data() + (static_cast<std::size_t>(r) * n + t) * d;
      double v = 0;
      for (int c = 0; c < d; ++c) v += double(q[static_cast<std::size_t>(r) * d + c]) * x[c];
      ref[static_cast<std::size_t>(r) * n + t] = sigma.empty() ? v : v * sigma[static_cast<std::size_t>(r) * n + t];
    }
  return test::nmse(got, ref);
}

// The one-head inner keys over 32 regions (the paper's heads): on a 132-SM device a region gets 16
// blocks, so 4097 tokens are runs of at most three units a warp, which the kernel prefetches before
// its wait, and 8197 tokens runs of four or five, which it does not (gpu/scores_mma.cu). Head_dim
// 128 takes the int8 form (gpu/key_bytes.cuh), whose q is 16-bit fixed point per 32-channel chunk.
// Both ends of the lengths, each mode, 3 and 8 bits, token scales on every other run, against double.
TEST(GpuInnerKeys, ShortAndLongRunsMatchDouble) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int regions = 32, d = 128;
  std::mt19937_64 rng(6161);
  std::normal_distribution<float> normal;
  double worst = 0;
  int run = 0;
  for (int n : {33, 4097, 8192 + 5}) {
    std::vector<float> rows(static_cast<std::size_t>(regions) * n * d);
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = round_to_half(normal(rng) * ((i % d) == 7 ? 15.0f : 1.0f) + 0.5f);
    for (Mode mode : {Mode::sym, Mode::asym, Mode::hybrid})
      for (int bits : {3, 8}) {
        SCOPED_TRACE(std::string(to_string(mode)) + std::to_string(bits) + ", " + std::to_string(n) + " tokens");
        const TensorSpec spec = test::swept_spec(mode, bits, true, 32, true);
        test::PackedPair pair(spec, rows, regions, n, d);
        const double e = one_head_scores_nmse(pair, regions, n, d, run++ % 2 == 1, rng);
        worst = std::max(worst, e);
        // q as 16-bit fixed point per chunk, each entry off by <= 2^-16 of the chunk's largest, most in
        // the chunk with the 20x channel: ~1e-9 (worst 1.8e-9 on the H100); 1e-6 is the bound.
        EXPECT_LT(e, 1e-6);
      }
  }
  std::printf("    inner keys, %d runs over %d regions: worst NMSE %.3g\n", run, regions, worst);
}

// Long runs of 3-bit keys take the ring (gpu/scores_mma.cu: whole units copied into shared-memory
// stages): on a 132-SM device, 32 regions of 32776 tokens give each warp 8 units, twice the ring's
// threshold, and 32776 tokens (a multiple of 8) keep every region's scales on 16 bytes at groups of
// 32, 64 and 128. The region's partial last unit (8 tokens) takes the global loads. Each mode at groups
// of 32, sym at 64 and 128, token scales on every other run, against double; each run again with the
// warps' first units prefetched (prefetch_first_units), bit for bit the same.
TEST(GpuInnerKeys, LongRunsMatchDouble) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int regions = 32, d = 128, n = 32768 + 8;
  std::mt19937_64 rng(6262);
  std::normal_distribution<float> normal;
  std::vector<float> rows(static_cast<std::size_t>(regions) * n * d);
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = round_to_half(normal(rng) * ((i % d) == 7 ? 15.0f : 1.0f) + 0.5f);
  double worst = 0;
  int run = 0;
  for (int group : {32, 64, 128})
    for (Mode mode : {Mode::sym, Mode::asym, Mode::hybrid}) {
      if (group != 32 && mode != Mode::sym) continue;
      SCOPED_TRACE(std::string(to_string(mode)) + "3, groups of " + std::to_string(group));
      const TensorSpec spec = test::swept_spec(mode, 3, true, group, true);
      test::PackedPair pair(spec, rows, regions, n, d);
      const double e = one_head_scores_nmse(pair, regions, n, d, run++ % 2 == 1, rng, /*prefetch_too=*/true);
      worst = std::max(worst, e);
      // As ShortAndLongRunsMatchDouble: q's 16-bit fixed point leaves ~1e-9; 1e-6 is the bound.
      EXPECT_LT(e, 1e-6);
    }
  std::printf("    inner keys, %d runs of %d tokens over %d regions: worst NMSE %.3g\n", run, n, regions, worst);
}

// The one-head values kernel copies stretches with cp.async in 16-byte pieces; regions whose codes or
// scales do not start on 16 bytes (here 4 and 2 bytes off) take the CUDA-core kernel instead, with
// the same result bit for bit, rather than a misaligned copy.
TEST(GpuLaunchers, ValuesOffSixteenBytesTakeTheCudaCoreKernel) {
  if (gpu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  gpu::RegionShape s;
  s.tokens = 4096 + 32;
  s.head_dim = 128;
  s.bits = 2;
  s.group_size = 32;
  s.channel_axis = false;
  s.mode = gpu::GroupMode::hybrid;
  const int regions = 2, d = s.head_dim, n = s.tokens;
  std::mt19937_64 rng(77);
  std::normal_distribution<float> normal;
  std::vector<float> rows(static_cast<std::size_t>(regions) * n * d), probs(static_cast<std::size_t>(regions) * n);
  for (auto& x : rows) x = round_to_half(normal(rng));
  for (auto& x : probs) x = std::fabs(normal(rng)) / n;
  DeviceCache cache(s, regions);
  float* d_rows = upload(rows);
  float* d_probs = upload(probs);
  CUDA_OK(gpu::pack({d_rows, cache.dev}));
  // The same regions, moved 4 bytes (codes) and 2 bytes (fp16 scales) off 16.
  const std::size_t code_bytes = 4 * regions * s.code_words(), scale_bytes = 2 * regions * s.groups();
  std::uint8_t *codes = nullptr, *scales = nullptr;
  CUDA_OK(cudaMalloc(&codes, code_bytes + 16));
  CUDA_OK(cudaMalloc(&scales, scale_bytes + 16));
  CUDA_OK(cudaMemcpy(codes + 4, cache.dev.codes, code_bytes, cudaMemcpyDeviceToDevice));
  CUDA_OK(cudaMemcpy(scales + 2, cache.dev.scales, scale_bytes, cudaMemcpyDeviceToDevice));
  gpu::DeviceRegions off = cache.dev;
  off.codes = reinterpret_cast<std::uint32_t*>(codes + 4);
  off.scales = scales + 2;
  const OutputsRun tensor_cores(cache.dev, d_probs, 1, 16, gpu::GemvKernel::automatic);
  const OutputsRun cuda_cores(cache.dev, d_probs, 1, 16, gpu::GemvKernel::cuda_cores);
  const OutputsRun moved(off, d_probs, 1, 16, gpu::GemvKernel::automatic);
  CUDA_OK(tensor_cores.status);
  CUDA_OK(cuda_cores.status);
  CUDA_OK(moved.status);
  const std::vector<float> a = tensor_cores.host(), b = cuda_cores.host(), c = moved.host();
  EXPECT_EQ(b, c);
  // The int8 kernel against the CUDA-core one: the 16-bit fixed point of p, ~1e-10 (the GEMV sweep).
  EXPECT_LT(test::nmse(a, std::vector<double>(b.begin(), b.end())), 1e-8);
  for (void* p : std::initializer_list<void*>{d_rows, d_probs, codes, scales}) cudaFree(p);
}

TEST(GpuLaunchers, UnsupportedShapesAreErrorsNotCrashes) {
  gpu::ScoresParams sp;
  sp.keys.shape.head_dim = 96;
  sp.keys.shape.group_size = 32;
  EXPECT_EQ(gpu::scores_inner(sp), cudaErrorInvalidValue);
  gpu::PackParams pp;
  pp.out.shape.bits = 5;
  EXPECT_EQ(gpu::pack(pp), cudaErrorInvalidValue);
  gpu::OutputsParams op;
  op.values.shape.channel_axis = true;
  EXPECT_EQ(gpu::outputs_inner(op), cudaErrorInvalidValue);
  op.values.shape.channel_axis = false;
  EXPECT_EQ(gpu::outputs_outer(op), cudaErrorInvalidValue);  // the outer layout takes channel-axis values
  op.values.shape.channel_axis = true;
  op.group = 9;
  EXPECT_EQ(gpu::outputs_outer(op), cudaErrorInvalidValue);
  sp.keys.shape.head_dim = 128;
  sp.keys.shape.channel_axis = false;
  sp.keys.shape.tokens = 40;  // not a whole number of 32-token groups
  EXPECT_EQ(gpu::scores_outer(sp), cudaErrorInvalidValue);
  gpu::RotateParams rp;
  rp.count = 4;
  EXPECT_EQ(gpu::rotate_rows(rp), cudaErrorInvalidValue);  // no rows
  float dummy = 0;
  rp.rows = &dummy;
  rp.head_dim = 96;
  EXPECT_EQ(gpu::rotate_rows(rp), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvq
