#!/usr/bin/env bash
# One call on the lent GPU machine (docs/PERF.md): what is installed, the data/dump_hf.py test on
# the GPU, the CUDA build, the GPU tests, compute-sanitizer (memcheck, racecheck) over a slice of
# them, the GPU benchmarks and kvq bench's cuda backend. Logs and results under $OUT (or ./device_out),
# eight files at most.
# SKIP_DUMP_HF=1 skips the Python test, SKIP_TESTS=1 the GPU tests, SKIP_SANITIZER=1 the sanitizer,
# SKIP_BENCH=1 both benchmarks, SKIP_GRID=1 only kvq bench's grid (a warm machine keeps build-device/
# between calls).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device_out}"
mkdir -p "$out"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
  nvcc --version | tail -1
  python3 -c 'import torch, transformers, h5py; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$out/env.txt"
if [ "${SKIP_DUMP_HF:-0}" != 1 ]; then
  echo "== dump_hf test (GPU) =="
  PYTHONUNBUFFERED=1 python3 tests/test_dump_hf.py 2>&1 | tail -3 | tee "$out/dump_hf.txt"
fi
echo "== CUDA build =="
# PCRE2 is not on the GPU image: Debian's package files travel in .deps/ (scripts/device_deps.sh).
deps="$PWD/.deps/usr"
export LD_LIBRARY_PATH="$deps/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{ cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON -DCMAKE_PREFIX_PATH="$deps" \
    && cmake --build build-device -j16 --target test_gpu_device test_gpu_kernels test_gpu_attention test_gpu_cache test_sweep kvq bench_gpu; } > "$out/build.txt" 2>&1 \
  || { echo "build failed"; grep -m 20 -E "error|Error" "$out/build.txt"; exit 1; }
echo "== GPU tests =="
[ "${SKIP_TESTS:-0}" = 1 ] || { build-device/tests/test_gpu_device --gtest_brief=1; echo "rc=$?"
  build-device/tests/test_gpu_kernels --gtest_brief=1; echo "rc=$?"
  build-device/tests/test_gpu_attention --gtest_brief=1; echo "rc=$?"
  build-device/tests/test_gpu_cache --gtest_brief=1; echo "rc=$?"
  build-device/tests/test_sweep --gtest_brief=1 --gtest_filter='Latency.*'; echo "rc=$?"; } > "$out/tests.txt" 2>&1
[ "${SKIP_TESTS:-0}" = 1 ] || grep -E "FAILED|PASSED|SKIPPED|rc=|Failure" "$out/tests.txt" | head -40
[ "${SKIP_SANITIZER:-0}" = 1 ] || {
echo "== compute-sanitizer =="
filter='Sweep/GpuKernels.*/hybrid3_*:Sweep/GpuKernels.*/hybrid2_token_g32_d128*:Sweep/GpuKernels.*/asym2_*g16*:Sweep/GpuKernels.*/sym2_token_g16_d128_fp16_twos*:Sweep/GpuKernels.*/hybrid8_token_g16_d128*:Sweep/GpuKernels.*/asym4_token_g32_d128*:Sweep/GpuKernels.*/*2_channel_g64_d128*:Sweep/GpuKernels.*/*4_channel_g32_d128_fp16*:Sweep/GpuKernels.*/*8_channel_g16_d128*:GpuFp16.*:GpuRotation.*'
attention_filter='Sweep/GpuAttention.*gqa4*:Sweep/GpuAttention.*gqa7*:Sweep/GpuAttention.*v2hybrid*gqa1*:Sweep/GpuOuterAttention.*k2*:GpuGemvGroups.*'
cache_filter='Sweep/GpuPackAppend.*hybrid*:Sweep/GpuPackAppend.*asym2*:Sweep/GpuCacheAttention.*innerq_hybrid:Sweep/GpuCacheAttention.*kivi:GpuCacheAttention.*'
for tool in memcheck racecheck; do
  for run in "test_gpu_kernels $filter" "test_gpu_attention $attention_filter" "test_gpu_cache $cache_filter"; do
    set -- $run
    timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 build-device/tests/$1 --gtest_brief=1 --gtest_filter="$2" > "$out/sanitizer_log.txt" 2>&1
    rc=$?
    echo "$tool $1 rc=$rc: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' "$out/sanitizer_log.txt" | tr '\n' ' ' | cut -c1-400)"
    [ $rc = 0 ] || grep -m 3 -A4 -E "^========= (Invalid|Race|Error)" "$out/sanitizer_log.txt"
  done
done | tee "$out/sanitizer.txt"
rm -f "$out/sanitizer_log.txt"
}
[ "${SKIP_BENCH:-0}" = 1 ] && exit 0
echo "== benchmarks =="
# BENCH_ARGS narrows the run (e.g. --benchmark_filter=32768) when device time is short.
build-device/bench/bench_gpu --benchmark_repetitions=3 --benchmark_report_aggregates_only=true ${BENCH_ARGS:-} \
  --benchmark_out="$out/bench_gpu.json" --benchmark_out_format=json 2>&1 | grep -E "median|device|copy" | tee "$out/bench_gpu.txt"
[ "${SKIP_GRID:-0}" = 1 ] && exit 0
echo "== kvq bench (cuda) =="
# The latency grid of configs/paper_latency.yaml on the GPU (docs/PERF.md's table).
build-device/apps/kvq bench --config configs/paper_latency.yaml --backend cuda --output "$out/paper_latency_cuda.csv" 2>&1 | tail -4
