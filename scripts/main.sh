#!/usr/bin/env bash
# Fresh machine to the main job: install (dependencies and the SmolLM2-135M model), build, then
#   1. kvq dump:   SmolLM2's real KV cache over 1024 tokens of the GPL-3 text;
#   2. kvq sweep:  configs/paper_ablation.yaml on it (the InnerQ paper's configurations and
#                  ablations, attention error per layer and head, end-to-end perplexity);
#   3. kvq report: results/paper_ablation/report.md and report.html.
# Re-running resumes the sweep from its journal.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
kvq=build/apps/kvq
mkdir -p results
[ -f results/smollm2_gpl3_1024.h5 ] || $kvq dump --tokens 1024 --out results/smollm2_gpl3_1024.h5
$kvq sweep configs/paper_ablation.yaml --resume
$kvq report results/paper_ablation
echo "main: results/paper_ablation/report.md (and report.html, results.csv, ppl.csv, manifest.json)"
