#!/usr/bin/env bash
# Reproduce a depth-compression report (README "Evaluation"): compress MODEL with every method at each
# ratio, measure quality (flatten-hf eval), speed and size (flatten-hf bench) and build the report with
# its plots in DOCS. Checkpoints go to OUT.
#
#   bash scripts/report.sh                                   # SmolLM2-135M, ratios 0.1/0.2/0.3 -> docs/report
#   MODEL=qwen2.5-coder-0.5b NAME=qwen2 RATIOS=0.2 CALIB_SAMPLES=16 LIMIT=100 MAX_WINDOWS=16 ROUNDS=3 \
#     DOCS=docs/report-qwen2 bash scripts/report.sh          # a quick Qwen2.5-Coder-0.5B run at ratio 0.2
#
# Each model is evaluated in its own run and writes DOCS/eval/<checkpoint>.json (DOCS/eval-quick/ when
# LIMIT or MAX_WINDOWS is set), so an interrupted run resumes where it stopped: a model with a JSON is
# not evaluated again (delete the file to redo it), and lm-eval's request cache in OUT/lm-eval-cache
# keeps the answers of a model whose run was cut off. The full five tasks are about 60,000 requests per
# model: about an hour per SmolLM2-135M model on 2 CPU cores in bfloat16 (measured: 3,582 s for the
# FlattenGPT 0.2 checkpoint's perplexity and 58,548 of its requests, the rest came from the cache).
#
#   MODEL          offline asset name (default smollm2-135m); NAME: checkpoint prefix (default smollm2)
#   RATIOS         compression ratios (default "0.1 0.2 0.3"); METHODS (default "shortgpt flattengpt replaceme replaceme-cosine come"):
#                  registered methods with their defaults, or replaceme-cosine (ReplaceMe with --estimator cosine)
#   RECOVER        methods whose checkpoints are also recovered (default "flattengpt"; "" for none): flatten-hf
#                  recover with RECOVER_STEPS (default 200) distillation steps into OUT/<checkpoint>-recovered,
#                  evaluated like the others (the report names them "<method> + recover"; not benchmarked: same shape)
#   CALIB_SAMPLES  calibration sequences of 512 tokens (default 64)
#   DTYPE          dtype of the evaluation (default bfloat16: measured 2.0x the float32 speed on a CPU
#                  with AVX512-BF16; use float32 on CPUs without it: on an AMD EPYC without AVX-512, 200
#                  PIQA documents took 292 s in bfloat16 and 48 s in float32)
#   SHARED_PREFIX  1: score the zero-shot tasks with `eval --shared-prefix` (each context once: about half the
#                  compute; every model of one report must be scored the same way)
#   LIMIT          documents per zero-shot task, MAX_WINDOWS 2048-token perplexity windows: quick runs
#                  only (default: none, the full tasks and text)
#   REPEATS        timing repeats of the speed benchmark (default 3); ROUNDS: processes per model,
#                  interleaved, median over them (default 1; processes differ by ~10% on a shared VM)
#   OUT, DOCS      checkpoint folder (default out/report) and report folder (default docs/report)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2-135m}
NAME=${NAME:-smollm2}
OUT=${OUT:-out/report}
DOCS=${DOCS:-docs/report}
F=.venv/bin/flatten-hf
EVAL_ARGS=(--dtype "${DTYPE:-bfloat16}" --batch-size 32 --cache "$OUT/lm-eval-cache")
EVAL_DIR=$DOCS/eval
if [ -n "${LIMIT:-}" ] || [ -n "${MAX_WINDOWS:-}" ]; then EVAL_DIR=$DOCS/eval-quick; fi
if [ -n "${LIMIT:-}" ]; then EVAL_ARGS+=(--limit "$LIMIT"); fi
if [ "${SHARED_PREFIX:-0}" = 1 ]; then EVAL_ARGS+=(--shared-prefix); fi
if [ -n "${MAX_WINDOWS:-}" ]; then EVAL_ARGS+=(--max-windows "$MAX_WINDOWS"); fi
mkdir -p "$OUT" "$EVAL_DIR"
models=("$MODEL")
# Compress arguments of a METHODS entry: a method name, or one of the named variants below.
compress_args() {
  case $1 in
    replaceme-cosine) echo "--method replaceme --estimator cosine" ;;
    *) echo "--method $1" ;;
  esac
}
recovered=()
for method in ${METHODS:-shortgpt flattengpt replaceme replaceme-cosine come}; do
  for ratio in ${RATIOS:-0.1 0.2 0.3}; do
    dir="$OUT/$NAME-$method-$ratio"
    [ -f "$dir/config.json" ] || $F -q compress "$MODEL" $(compress_args "$method") --ratio "$ratio" \
      --calib-samples "${CALIB_SAMPLES:-64}" --out "$dir"
    models+=("$dir")
    if [[ " ${RECOVER-flattengpt} " == *" $method "* ]]; then
      [ -f "$dir-recovered/config.json" ] || $F -q recover "$dir" --steps "${RECOVER_STEPS:-200}" --out "$dir-recovered"
      recovered+=("$dir-recovered")
    fi
  done
done
for model in "${models[@]}" "${recovered[@]}"; do
  json="$EVAL_DIR/$(basename "$model").json"
  [ -f "$json" ] || $F -q eval "$model" "${EVAL_ARGS[@]}" --json "$json"
done
# The Flattened classes at the dense widths (nothing removed): the class-overhead reference of the speed table.
ref="$OUT/$NAME-reference"
[ -f "$ref/config.json" ] || $F -q compress "$MODEL" --method shortgpt --num-layers 0 --flattened-classes \
  --calib-samples 8 --out "$ref"
[ -f "$DOCS/bench.json" ] || \
  $F -q bench "$MODEL" "$ref" "${models[@]:1}" --repeats "${REPEATS:-3}" --rounds "${ROUNDS:-1}" --json "$DOCS/bench.json"
$F -q report --eval "$EVAL_DIR"/*.json --bench "$DOCS/bench.json" --out "$DOCS" \
  --title "$MODEL: depth compression report"
