#!/usr/bin/env bash
# One call on the lent GPU machine (see docs/PERF.md): what is installed, the data/dump_hf.py
# test on the GPU, and the CUDA build with the GPU tests. Writes logs under $OUT (or ./device_out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device_out}"
mkdir -p "$out"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nvcc --version | tail -1
  python3 -c 'import torch, transformers, h5py; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'
  for h in eigen3/Eigen/Core hdf5/serial/hdf5.h hdf5.h fmt/format.h CLI/CLI.hpp gtest/gtest.h benchmark/benchmark.h nlohmann/json.hpp yaml-cpp/yaml.h pcre2.h openssl/evp.h; do
    if [ -e /usr/include/$h ] || [ -e /usr/local/include/$h ]; then echo "have $h"; else echo "MISSING $h"; fi
  done
} 2>&1 | tee "$out/env.txt"
echo "== dump_hf test (GPU) =="
PYTHONUNBUFFERED=1 python3 tests/test_dump_hf.py 2>&1 | tee "$out/dump_hf.txt"
echo "== CUDA build and GPU tests =="
# PCRE2 is not on the GPU image: Debian's package files travel in .deps/ (scripts/device_deps.sh).
deps="$PWD/.deps/usr"
export LD_LIBRARY_PATH="$deps/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON -DKVQ_BUILD_BENCHMARKS=OFF -DCMAKE_PREFIX_PATH="$deps" > "$out/configure.txt" 2>&1 \
  && cmake --build build-device -j16 --target test_gpu_device > "$out/build.txt" 2>&1 \
  && build-device/tests/test_gpu_device 2>&1 | tee "$out/test_gpu_device.txt" \
  || { echo "build failed (see configure.txt / build.txt)"; tail -20 "$out/configure.txt" "$out/build.txt" 2>/dev/null; }
