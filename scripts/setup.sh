#!/usr/bin/env bash
# Create ./.venv (if needed) and install flatten-hf with its test extra.
# torch is installed first, pinned, so that pip takes the local CPU wheel and never a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/python -c "import torch, transformers, flatten_hf; print(f'flatten-hf {flatten_hf.__version__}: torch {torch.__version__}, transformers {transformers.__version__}')"
