"""ONNX export of (compressed) checkpoints through optimum-onnx, and ONNX Runtime inference with a KV cache.

optimum-onnx pins transformers 4.x (0.1.0: 4.57.6), which flatten-hf (transformers 5) cannot share an
environment with. So this file is **self-contained**: it imports only torch, transformers, optimum and
its sibling `optimum_script.py`, never flatten-hf, and runs as a script in the optimum-onnx environment
(`flatten-hf export --format onnx --python ENV/bin/python` starts it there; `scripts/setup.sh` makes
`.venv-onnx`):

    ENV/bin/python onnx_export.py MODEL_DIR OUT_DIR        # export
    ENV/bin/python onnx_export.py --check MODEL_DIR OUT_DIR # ONNX Runtime vs transformers: logits, greedy
    ENV/bin/python onnx_export.py --windows IDS.pt MODEL_DIR OUT_DIR  # perplexity of both on saved windows

Stock checkpoints (ShortGPT, ReplaceMe, uniform FlattenGPT) need nothing: optimum exports them as the
LLaMA / Qwen2 models they are. Per-layer (Flattened) checkpoints load with their own modeling code
(`trust_remote_code`) and need two things optimum derives from one global key/value-head count:

- the export's dummy KV cache, which `FlattenedPastKeyValuesGenerator` sizes per layer (passed to
  `main_export` as `custom_onnx_configs`, optimum's hook for architectures it does not know);
- the first generation step's empty cache in ONNX Runtime, which `FlattenedORTModelForCausalLM`
  (an `ORTModelForCausalLM`) makes per layer. Load per-layer exports with it.
"""

from __future__ import annotations

import sys

import torch
from optimum.exporters.onnx import main_export
from optimum.exporters.onnx.model_configs import LlamaOnnxConfig, Qwen2OnnxConfig
from optimum.onnxruntime import ORTModelForCausalLM
from optimum_script import TASK, custom_configs, main, per_layer_config

# model_type -> its per-layer export config (FlattenedLlamaOnnxConfig, FlattenedQwen2OnnxConfig)
ONNX_CONFIGS = {"flatten_llama": per_layer_config(LlamaOnnxConfig), "flatten_qwen2": per_layer_config(Qwen2OnnxConfig)}


class FlattenedORTModelForCausalLM(ORTModelForCausalLM):
    """`ORTModelForCausalLM` for per-layer exports: the first step's empty cache has each layer's heads."""

    def forward(self, input_ids, attention_mask=None, past_key_values=None, position_ids=None, use_cache=None,
                **kwargs):
        heads = getattr(self.config, "num_key_value_heads_per_layer", None)
        if past_key_values is None and self.key_value_input_names and heads:
            past_key_values = tuple(
                tuple(torch.zeros((input_ids.shape[0], h, 0, self.embed_size_per_head), dtype=self.dtype)
                      for _ in range(2)) for h in heads)
        return super().forward(input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                               position_ids=position_ids, use_cache=use_cache, **kwargs)


def export_onnx(model_dir: str, out_dir: str) -> None:
    """optimum's `main_export` with a KV cache; the Flattened export config for per-layer checkpoints."""
    custom = custom_configs(model_dir, ONNX_CONFIGS, "ONNX")
    main_export(model_dir, out_dir, task=TASK, trust_remote_code=bool(custom), custom_onnx_configs=custom or None)


def load_onnx(out_dir: str) -> FlattenedORTModelForCausalLM:
    return FlattenedORTModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)


if __name__ == "__main__":
    main(sys.argv[1:], "ONNX (optimum-onnx)", export_onnx, load_onnx)
