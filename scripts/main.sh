#!/usr/bin/env bash
# Fresh machine to the main job: install, build, then evaluate the paper's configurations.
# Until `kvq dump` (real SmolLM2 caches) and `kvq sweep` land, the main job runs on a
# synthetic dump with the same shape as SmolLM2-135M (30 layers, 9 heads, 3 kv heads,
# head_dim 64) and the six InnerQ-script configurations plus the llama.cpp types.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
mkdir -p results
dump=results/synthetic_smollm2_shape.h5
[ -f "$dump" ] || build/apps/kvq synth "$dump" --layers 30 --heads 9 --kv-heads 3 --head-dim 64 --seq-len 1024 --seed 0
build/apps/kvq eval "$dump" --preset fp16,kivi,kivi_sink,innerq_base,innerq_small,innerq_hybrid,q8_0,q4_0,q4_1 \
  --csv results/main_eval.csv --json results/main_eval.json
echo "main: results in results/main_eval.csv and results/main_eval.json"
