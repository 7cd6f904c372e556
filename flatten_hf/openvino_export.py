"""OpenVINO export of (compressed) checkpoints through optimum-intel, and OpenVINO inference with a KV cache.

optimum-intel 2.2.0 pins transformers below 5.6 (it brings 5.5.4), older than flatten-hf's, so, like
`onnx_export.py`, this file is **self-contained**: it imports only torch, transformers, optimum and its
sibling `optimum_script.py`, never flatten-hf, and runs as a script in an optimum-intel environment
(`flatten-hf export --format openvino --python ENV/bin/python` starts it there; `scripts/setup.sh` makes
`.venv-openvino`):

    ENV/bin/python openvino_export.py MODEL_DIR OUT_DIR        # export (OpenVINO IR, stateful KV cache)
    ENV/bin/python openvino_export.py --check MODEL_DIR OUT_DIR # OpenVINO vs transformers: logits, greedy
    ENV/bin/python openvino_export.py --windows IDS.pt MODEL_DIR OUT_DIR  # perplexity of both on saved windows

Stock checkpoints (ShortGPT, ReplaceMe, uniform FlattenGPT) need nothing: optimum-intel exports them as
the LLaMA / Qwen2 models they are. Per-layer (Flattened) checkpoints load with their own modeling code
(`trust_remote_code`) and need the dummy KV cache sized per layer (`FlattenedPastKeyValuesGenerator`,
passed to `main_export` as `custom_export_configs`). The export is *stateful* (optimum-intel's default:
the cache lives inside the compiled model) and each layer's cache state takes its shape from the traced
graph, so, unlike ONNX Runtime, inference needs no per-layer help: `OVModelForCausalLM` loads both kinds.
"""

from __future__ import annotations

import sys

from optimum.exporters.openvino import main_export
from optimum.exporters.openvino.model_configs import LlamaOpenVINOConfig, Qwen2OpenVINOConfig
from optimum.intel import OVModelForCausalLM
from optimum_script import TASK, custom_configs, main, per_layer_config

# model_type -> its per-layer export config (FlattenedLlamaOpenVINOConfig, FlattenedQwen2OpenVINOConfig)
OPENVINO_CONFIGS = {"flatten_llama": per_layer_config(LlamaOpenVINOConfig),
                    "flatten_qwen2": per_layer_config(Qwen2OpenVINOConfig)}


def export_openvino(model_dir: str, out_dir: str) -> None:
    """optimum-intel's `main_export` (stateful KV cache, the checkpoint's float weights: no weight
    compression); the Flattened export config for per-layer checkpoints."""
    custom = custom_configs(model_dir, OPENVINO_CONFIGS, "OpenVINO")
    main_export(model_dir, out_dir, task=TASK, trust_remote_code=bool(custom), custom_export_configs=custom or None,
                library_name="transformers")


def load_openvino(out_dir: str) -> OVModelForCausalLM:
    # Compared with transformers in float32: the CPU plugin would otherwise infer in bfloat16 wherever the
    # processor has it (AVX512-BF16, AMX), a deployment choice (`ov_config`) rather than the export's.
    return OVModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True,
                                              ov_config={"INFERENCE_PRECISION_HINT": "f32"})


if __name__ == "__main__":
    main(sys.argv[1:], "OpenVINO (optimum-intel)", export_openvino, load_openvino)
