#!/usr/bin/env bash
# One call on the lent GPU machine (docs/PERF.md): what is installed, the data/dump_hf.py test on
# the GPU, the CUDA build, the GPU tests, compute-sanitizer (memcheck, racecheck) over a slice of
# them, and the GPU benchmarks. Logs and results under $OUT (or ./device_out), six files at most.
# SKIP_DUMP_HF=1 skips the Python test, SKIP_SANITIZER=1 the sanitizer.
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
    && cmake --build build-device -j16 --target test_gpu_device test_gpu_kernels bench_gpu; } > "$out/build.txt" 2>&1 \
  || { echo "build failed"; grep -m 20 -E "error|Error" "$out/build.txt"; exit 1; }
echo "== GPU tests =="
{ build-device/tests/test_gpu_device --gtest_brief=1; echo "rc=$?"
  build-device/tests/test_gpu_kernels --gtest_brief=1; echo "rc=$?"; } > "$out/tests.txt" 2>&1
grep -E "FAILED|PASSED|SKIPPED|rc=|Failure" "$out/tests.txt" | head -40
[ "${SKIP_SANITIZER:-0}" = 1 ] || {
echo "== compute-sanitizer =="
filter='Sweep/GpuKernels.*/hybrid3_*:Sweep/GpuKernels.*/asym2_*g16*:GpuFp16.*:GpuRotation.*'
for tool in memcheck racecheck; do
  timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 build-device/tests/test_gpu_kernels --gtest_brief=1 --gtest_filter="$filter" > "$out/sanitizer_log.txt" 2>&1
  echo "$tool rc=$?: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' "$out/sanitizer_log.txt" | tr '\n' ' ')"
done | tee "$out/sanitizer.txt"
rm -f "$out/sanitizer_log.txt"
}
echo "== benchmarks =="
# BENCH_ARGS narrows the run (e.g. --benchmark_filter=32768) when device time is short.
build-device/bench/bench_gpu --benchmark_repetitions=3 --benchmark_report_aggregates_only=true ${BENCH_ARGS:-} \
  --benchmark_out="$out/bench_gpu.json" --benchmark_out_format=json 2>&1 | grep -E "median|device|copy" | tee "$out/bench_gpu.txt"
