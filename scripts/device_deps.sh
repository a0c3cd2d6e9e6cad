#!/usr/bin/env bash
# Unpacks the Debian packages the GPU machine's image lacks (PCRE2) into .deps/, which
# the device tool carries (carry: [".deps"]); scripts/device_run.sh points CMake at it.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .deps && mkdir -p .deps/debs
(cd .deps/debs && apt-get download libpcre2-dev libpcre2-8-0 >/dev/null)
for deb in .deps/debs/*.deb; do dpkg -x "$deb" .deps; done
rm -rf .deps/debs
echo "device deps in .deps/"
