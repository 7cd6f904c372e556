#!/usr/bin/env bash
# Create ./.venv (if needed) and install flatten-hf with its test extra; also create
# ./.venv-transformers4, a bare torch + transformers 4.57 environment in which the tests load
# compressed checkpoints the way Hub users on the last 4.x line do (remote code, no flatten-hf).
# torch is pinned by constraints.txt (the local CPU wheel, never a CUDA build); the package itself
# only asks for torch>=2.4, so that installing it never replaces a user's CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PIP=(python -m pip install -q --disable-pip-version-check -c constraints.txt)
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/"${PIP[@]}" torch
.venv/bin/"${PIP[@]}" -e ".[test]"
.venv/bin/python -c "import torch, transformers, flatten_hf; print(f'flatten-hf {flatten_hf.__version__}: torch {torch.__version__}, transformers {transformers.__version__}')"

if [ ! -x .venv-transformers4/bin/python ]; then
  "$PYTHON" -m venv .venv-transformers4
fi
.venv-transformers4/bin/"${PIP[@]}" torch
.venv-transformers4/bin/"${PIP[@]}" "transformers==4.57.6"
.venv-transformers4/bin/python -c "import transformers; print(f'.venv-transformers4: transformers {transformers.__version__}')"
