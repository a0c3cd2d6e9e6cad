#!/usr/bin/env bash
# Fresh machine to every test: install, build, run the whole suite under ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
cd build
ctest --output-on-failure -j"$(nproc)"
