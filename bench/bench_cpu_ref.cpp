// CPU reference throughput, with OpenMP on every core:
//  - quantize + pack: GB/s of fp32 input, inner and outer grouping, 2 and 3 bits;
//  - attention (scores + softmax + output) for one query over N tokens: GB/s of packed cache read.
// Run: build/bench/bench_cpu_ref  (docs/PERF.md records the numbers and the command).
#include <benchmark/benchmark.h>

#include <random>

#include "core/half.h"
#include "cpu_ref/attention.h"
#include "cpu_ref/tensor_cache.h"

namespace {

constexpr int kHeadDim = 64;
constexpr int kTokens = 32768;

std::vector<float> rows(int n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(n) * kHeadDim);
  for (float& v : x) v = kvq::round_to_half(normal(rng));
  return x;
}

kvq::TensorSpec tensor(kvq::Mode mode, int bits, kvq::GroupAxis axis) {
  kvq::TensorSpec t;
  t.mode = mode;
  t.bits = bits;
  t.group_axis = axis;
  t.group_size = 32;
  t.flush = axis == kvq::GroupAxis::token ? 32 : 1;
  return t;
}

// Quantize + pack N x 64 fp32 values into a fresh region.
void quantize_pack(benchmark::State& state, kvq::TensorSpec spec) {
  const auto x = rows(kTokens, 1);
  for (auto _ : state) {
    kvq::cpu::PackedRegion region(spec, kHeadDim);
    region.append(x.data(), kTokens);
    benchmark::DoNotOptimize(region.codes().data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * kTokens * kHeadDim * 4);
}

// One decode step's attention for one query head over a prefilled cache.
void attention(benchmark::State& state, const std::string& preset) {
  const kvq::CacheSpec spec = kvq::preset(preset);
  const auto k = rows(kTokens, 2), v = rows(kTokens, 3), q = rows(1, 4);
  kvq::cpu::TensorCache keys = kvq::cpu::make_cache(spec, kvq::TensorKind::key, kHeadDim);
  kvq::cpu::TensorCache values = kvq::cpu::make_cache(spec, kvq::TensorKind::value, kHeadDim);
  // One head stands for the layer: its own RMS is the omni-token scale of a one-head layer.
  const auto ks = kvq::cpu::omni_token_scale({k.data()}, kTokens, kHeadDim);
  const auto vs = kvq::cpu::omni_token_scale({v.data()}, kTokens, kHeadDim);
  keys.prefill(k.data(), kTokens, ks.data());
  values.prefill(v.data(), kTokens, vs.data());
  kvq::cpu::AttentionResult out;
  for (auto _ : state) {
    kvq::cpu::quantized_attention(keys, values, q.data(), out);
    benchmark::DoNotOptimize(out.output.data());
  }
  const std::size_t bytes = keys.bytes() + values.bytes();
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
  state.counters["cache_MB"] = static_cast<double>(bytes) / 1e6;
}

using kvq::GroupAxis;
using kvq::Mode;
BENCHMARK_CAPTURE(quantize_pack, k3_sym_inner, tensor(Mode::sym, 3, GroupAxis::channel))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(quantize_pack, v2_hybrid_inner, tensor(Mode::hybrid, 2, GroupAxis::token))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(quantize_pack, v2_sym_inner, tensor(Mode::sym, 2, GroupAxis::token))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(quantize_pack, k2_asym_outer, tensor(Mode::asym, 2, GroupAxis::token))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(quantize_pack, v2_asym_outer, tensor(Mode::asym, 2, GroupAxis::channel))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(quantize_pack, k3_asym_inner, tensor(Mode::asym, 3, GroupAxis::channel))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(attention, innerq_hybrid, std::string("innerq_hybrid"))->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(attention, innerq_base, std::string("innerq_base"))->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(attention, kivi, std::string("kivi"))->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(attention, fp16, std::string("fp16"))->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
