#!/usr/bin/env bash
# Reproduce docs/report (README "Evaluation"): compress SmolLM2-135M with every method at ratios
# 0.1/0.2/0.3, then measure quality (flatten-hf eval), speed and size (flatten-hf bench) and build
# the report with its plots. Checkpoints go to ${OUT:-out/report}. For quick runs, LIMIT caps the
# documents per zero-shot task and MAX_WINDOWS the 2048-token perplexity windows (default: none, the
# full tasks and text). The README's report used LIMIT=200 MAX_WINDOWS=16.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/report}
F=.venv/bin/flatten-hf
LIMIT_ARGS=()
if [ -n "${LIMIT:-}" ]; then LIMIT_ARGS+=(--limit "$LIMIT"); fi
if [ -n "${MAX_WINDOWS:-}" ]; then LIMIT_ARGS+=(--max-windows "$MAX_WINDOWS"); fi
mkdir -p "$OUT"
models=(smollm2-135m)
for method in shortgpt flattengpt; do
  for ratio in 0.1 0.2 0.3; do
    dir="$OUT/smollm2-$method-$ratio"
    [ -f "$dir/config.json" ] || $F -q compress --method "$method" --ratio "$ratio" --calib-samples 64 --out "$dir"
    models+=("$dir")
  done
done
# The Flattened classes at the dense widths (nothing removed): the class-overhead reference of the speed table.
ref="$OUT/smollm2-reference"
[ -f "$ref/config.json" ] || $F -q compress --method shortgpt --num-layers 0 --flattened-classes --calib-samples 8 --out "$ref"
$F -q bench smollm2-135m "$ref" "${models[@]:1}" --json docs/report/bench_smollm2.json
$F -q eval "${models[@]}" "${LIMIT_ARGS[@]}" --batch-size 32 --json docs/report/eval_smollm2.json
$F -q report --eval docs/report/eval_smollm2.json --bench docs/report/bench_smollm2.json --out docs/report \
  --title "SmolLM2-135M: depth compression report"
