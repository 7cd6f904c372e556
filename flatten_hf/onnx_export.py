"""ONNX export of (compressed) checkpoints through optimum-onnx, and ONNX Runtime inference with a KV cache.

optimum-onnx pins transformers 4.x (0.1.0: 4.57.6), which flatten-hf (transformers 5) cannot share an
environment with. So this file is **self-contained**: it imports only torch, transformers and optimum,
never flatten-hf, and runs as a script in the optimum-onnx environment (`flatten-hf export --format onnx
--python ENV/bin/python` starts it there; `scripts/setup.sh` makes `.venv-onnx`):

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

import argparse
import json
import sys

import torch
from optimum.exporters.onnx import main_export
from optimum.exporters.onnx.model_configs import LlamaOnnxConfig, Qwen2OnnxConfig
from optimum.onnxruntime import ORTModelForCausalLM
from optimum.utils import DummyTextInputGenerator
from optimum.utils.input_generators import MistralDummyPastKeyValuesGenerator
from transformers import AutoConfig, AutoModelForCausalLM

TASK = "text-generation-with-past"


class FlattenedPastKeyValuesGenerator(MistralDummyPastKeyValuesGenerator):
    """Dummy past keys and values with each layer's own number of key/value heads."""

    def __init__(self, task: str, normalized_config, **kwargs):
        super().__init__(task, normalized_config, **kwargs)
        self.kv_heads = list(normalized_config.config.num_key_value_heads_per_layer)

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
        return [tuple(self.random_float_tensor((self.batch_size, heads, self.sequence_length, self.head_dim),
                                               framework=framework, dtype=float_dtype) for _ in range(2))
                for heads in self.kv_heads]


class FlattenedLlamaOnnxConfig(LlamaOnnxConfig):
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyTextInputGenerator, FlattenedPastKeyValuesGenerator)
    DUMMY_PKV_GENERATOR_CLASS = FlattenedPastKeyValuesGenerator


class FlattenedQwen2OnnxConfig(Qwen2OnnxConfig):
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyTextInputGenerator, FlattenedPastKeyValuesGenerator)
    DUMMY_PKV_GENERATOR_CLASS = FlattenedPastKeyValuesGenerator


ONNX_CONFIGS = {"flatten_llama": FlattenedLlamaOnnxConfig, "flatten_qwen2": FlattenedQwen2OnnxConfig}


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
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    custom = {}
    if config.model_type in ONNX_CONFIGS:
        custom = {"model": ONNX_CONFIGS[config.model_type](config, task="text-generation", use_past=True,
                                                            use_past_in_inputs=True)}
    elif config.model_type.startswith("flatten_"):
        raise SystemExit(f"ONNX export supports Flattened LLaMA and Qwen2 checkpoints, not {config.model_type}.")
    main_export(model_dir, out_dir, task=TASK, trust_remote_code=bool(custom), custom_onnx_configs=custom or None)


def check_onnx(model_dir: str, out_dir: str, new_tokens: int = 12) -> dict:
    """ONNX Runtime against transformers on the same ids: max logit difference and greedy tokens."""
    reference = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    session = FlattenedORTModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)
    ids = torch.randint(3, min(2000, reference.config.vocab_size), (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(ids).logits
        got = session(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        greedy = [m.generate(ids[:, :8], max_new_tokens=new_tokens, do_sample=False)[0, 8:].tolist()
                  for m in (reference, session)]
    return {"max_abs_diff": (got - expected).abs().max().item(), "logit_scale": expected.abs().max().item(),
            "greedy_transformers": greedy[0], "greedy_onnxruntime": greedy[1]}


def window_perplexity(model_dir: str, out_dir: str, windows_path: str) -> dict:
    """Perplexity of transformers and of ONNX Runtime on `[n, seq_len]` token windows saved with torch.save
    (flatten-hf's evaluation windows, so the numbers compare with `flatten-hf ppl`)."""
    windows = torch.load(windows_path)
    models = {"transformers": AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval(),
              "onnxruntime": FlattenedORTModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)}
    result = {}
    for name, model in models.items():
        nll = 0.0
        with torch.no_grad():
            for window in windows:
                ids = window[None]
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1].float()
                nll += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
        result[name] = float(torch.tensor(nll / (windows.shape[0] * (windows.shape[1] - 1))).exp())
    return result


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description="ONNX export (optimum-onnx) of a stock or Flattened checkpoint.")
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("--check", action="store_true", help="compare an export with transformers (prints JSON)")
    p.add_argument("--windows", default=None, help="perplexity of both on these saved token windows (prints JSON)")
    args = p.parse_args(argv)
    if args.windows:
        print(json.dumps(window_perplexity(args.model_dir, args.out_dir, args.windows)))
    elif args.check:
        print(json.dumps(check_onnx(args.model_dir, args.out_dir)))
    else:
        export_onnx(args.model_dir, args.out_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
