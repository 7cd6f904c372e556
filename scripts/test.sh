#!/usr/bin/env bash
# The full test suite from a fresh clone: set up, lint (ruff), fetch the offline assets, run every test (slow
# real-model tests included). Pass pytest arguments through, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check flatten_hf modeling tests benchmarks
.venv/bin/flatten-hf -q assets fetch
.venv/bin/flatten-hf -q assets fetch qwen2.5-coder-0.5b  # its tokenizer: the GGUF tests' tiny Qwen2 models
export LLAMA_CPP_DIR="${LLAMA_CPP_DIR:-$PWD/.cache/llama.cpp}"  # the GGUF export tests run, not skip
export FLATTEN_HF_ONNX_PYTHON="${FLATTEN_HF_ONNX_PYTHON:-$PWD/.venv-onnx/bin/python}"  # and the ONNX ones
export FLATTEN_HF_OPENVINO_PYTHON="${FLATTEN_HF_OPENVINO_PYTHON:-$PWD/.venv-openvino/bin/python}"  # and OpenVINO's
.venv/bin/python -m pytest "$@"
