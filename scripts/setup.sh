#!/usr/bin/env bash
# Create ./.venv (if needed) and install flatten-hf with its test extra; also create
# ./.venv-transformers4, a bare torch + transformers 4.57 environment in which the tests load
# compressed checkpoints the way Hub users on the last 4.x line do (remote code, no flatten-hf).
# It also unpacks llama.cpp's source tree (its GGUF converter) from the pinned llama-cpp-python sdist into
# .cache/llama.cpp, for `flatten-hf export --format gguf` and its tests (export LLAMA_CPP_DIR to use it);
# llama-cpp-python itself is built from source by pip (minutes, once: pip caches the wheel).
# And .venv-onnx, an optimum-onnx + onnxruntime environment (it pins transformers 4.57) for
# `flatten-hf export --format onnx --python .venv-onnx/bin/python`, and .venv-openvino, an optimum-intel +
# OpenVINO environment (it pins transformers 5.5) for `flatten-hf export --format openvino`.
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

# .venv-onnx: optimum-onnx pins transformers 4.57, so ONNX export runs there (flatten_hf/onnx_export.py).
if [ ! -x .venv-onnx/bin/python ]; then
  "$PYTHON" -m venv .venv-onnx
fi
.venv-onnx/bin/"${PIP[@]}" torch
.venv-onnx/bin/"${PIP[@]}" optimum-onnx onnxruntime
.venv-onnx/bin/python -c "import optimum.exporters.onnx, onnxruntime, transformers; print(f'.venv-onnx: transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}')"

# .venv-openvino: optimum-intel pins transformers <5.6, so OpenVINO export runs there (flatten_hf/openvino_export.py).
if [ ! -x .venv-openvino/bin/python ]; then
  "$PYTHON" -m venv .venv-openvino
fi
.venv-openvino/bin/"${PIP[@]}" torch
.venv-openvino/bin/"${PIP[@]}" "optimum-intel[openvino]"
# optimum-intel declares torchvision (for its vision models only). PyPI's torchvision does not load against this CPU
# torch wheel ("operator torchvision::nms does not exist"), and transformers then cannot import PreTrainedModel.
.venv-openvino/bin/python -m pip uninstall -q -y torchvision
.venv-openvino/bin/python -c "import optimum.intel.openvino, openvino, transformers; print(f'.venv-openvino: transformers {transformers.__version__}, openvino {openvino.__version__}')"

LLAMA_CPP_VERSION=$(sed -n 's/^llama-cpp-python==//p' constraints.txt)
if [ -f .cache/llama.cpp/.version ] && [ "$(cat .cache/llama.cpp/.version)" != "$LLAMA_CPP_VERSION" ]; then
  rm -rf .cache/llama.cpp  # an older tree this script unpacked (it wrote .version)
fi
if [ ! -e .cache/llama.cpp ]; then
  rm -rf .cache/llama-cpp-python-sdist
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d .cache/llama-cpp-python-sdist "llama-cpp-python==$LLAMA_CPP_VERSION"
  mkdir -p .cache/llama.cpp
  tar -xzf .cache/llama-cpp-python-sdist/llama_cpp_python-"$LLAMA_CPP_VERSION".tar.gz -C .cache/llama.cpp \
    --strip-components=3 "llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
  echo "$LLAMA_CPP_VERSION" > .cache/llama.cpp/.version
  rm -rf .cache/llama-cpp-python-sdist
fi
echo "llama.cpp converter: $PWD/.cache/llama.cpp (LLAMA_CPP_DIR)"
