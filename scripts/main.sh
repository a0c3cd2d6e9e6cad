#!/usr/bin/env bash
# Fresh machine to the main job: install (dependencies and the SmolLM2-135M model), build,
# then on SmolLM2's real KV cache over 1024 tokens of the GPL-3 text:
#   1. kvq dump: keys, values and queries of every layer;
#   2. kvq eval: the InnerQ paper's configurations and llama.cpp's cache types, attention error per layer;
#   3. kvq ppl:  end-to-end perplexity with each quantized cache in the loop.
# The config-driven paper ablation (kvq sweep configs/paper_ablation.yaml) replaces steps 2-3 when it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
kvq=build/apps/kvq
presets=fp16,kivi,kivi_sink,innerq_base,innerq_small,innerq_hybrid,per_token,q8_0,q4_0,q4_1
mkdir -p results
dump=results/smollm2_gpl3_1024.h5
[ -f "$dump" ] || $kvq dump --tokens 1024 --out "$dump"
$kvq eval "$dump" --preset "$presets" --csv results/main_eval.csv --json results/main_eval.json
$kvq ppl --tokens 1024 --preset "$presets" --json results/main_ppl.json
echo "main: results in results/ (main_eval.csv, main_eval.json, main_ppl.json)"
