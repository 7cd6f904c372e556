"""What the optimum export scripts (`onnx_export.py`, `openvino_export.py`) share: the per-layer export
configs (their dummy KV cache), the comparison with transformers, and their command line.

optimum-onnx and optimum-intel each pin a transformers older than flatten-hf's, so their scripts run in
environments of their own and import this file as their sibling (the script's folder is first on
`sys.path`). Like them it is **self-contained**: torch, transformers and optimum only, never flatten-hf.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from optimum.utils import DummyTextInputGenerator
from optimum.utils.input_generators import MistralDummyPastKeyValuesGenerator
from transformers import AutoConfig, AutoModelForCausalLM

TASK = "text-generation-with-past"


class FlattenedPastKeyValuesGenerator(MistralDummyPastKeyValuesGenerator):
    """Dummy past keys and values with each layer's own number of key/value heads.

    optimum sizes the cache it traces a decoder with from one global `num_key_value_heads`; a per-layer
    (Flattened) checkpoint's layers disagree with it, and tracing fails on the first layer that does.
    """

    def __init__(self, task: str, normalized_config, **kwargs):
        super().__init__(task, normalized_config, **kwargs)
        self.kv_heads = list(normalized_config.config.num_key_value_heads_per_layer)

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
        return [tuple(self.random_float_tensor((self.batch_size, heads, self.sequence_length, self.head_dim),
                                               framework=framework, dtype=float_dtype) for _ in range(2))
                for heads in self.kv_heads]


def per_layer_config(base: type) -> type:
    """`Flattened<base>`: an optimum export config (LLaMA's, Qwen2's; ONNX or OpenVINO) whose dummy KV cache
    has each layer's key/value heads."""
    return type(f"Flattened{base.__name__}", (base,), {
        "__doc__": f"{base.__name__} with a dummy KV cache sized per layer (FlattenedPastKeyValuesGenerator).",
        "DUMMY_INPUT_GENERATOR_CLASSES": (DummyTextInputGenerator, FlattenedPastKeyValuesGenerator),
        "DUMMY_PKV_GENERATOR_CLASS": FlattenedPastKeyValuesGenerator})


def custom_configs(model_dir: str, configs: dict[str, type], tool: str) -> dict:
    """optimum's `custom_*_configs` for `model_dir`: {"model": the per-layer config} for a Flattened checkpoint
    (by its model_type in `configs`), {} for a stock one, which optimum exports with its own config."""
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    if config.model_type in configs:
        return {"model": configs[config.model_type](config, task="text-generation", use_past=True,
                                                     use_past_in_inputs=True)}
    if config.model_type.startswith("flatten_"):
        raise SystemExit(f"{tool} export supports Flattened LLaMA and Qwen2 checkpoints, not {config.model_type}.")
    return {}


def _reference(model_dir: str):
    return AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()


def check_export(model_dir: str, exported, new_tokens: int = 12) -> dict:
    """The export against transformers on the same ids: max logit difference and greedy tokens (KV cache)."""
    reference = _reference(model_dir)
    ids = torch.randint(3, min(2000, reference.config.vocab_size), (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(ids).logits
        got = exported(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        greedy = [m.generate(ids[:, :8], max_new_tokens=new_tokens, do_sample=False)[0, 8:].tolist()
                  for m in (reference, exported)]
    return {"max_abs_diff": (got - expected).abs().max().item(), "logit_scale": expected.abs().max().item(),
            "greedy_transformers": greedy[0], "greedy_export": greedy[1]}


def window_perplexity(model_dir: str, exported, windows_path: str) -> dict:
    """Perplexity of transformers and of the export on `[n, seq_len]` token windows saved with torch.save
    (flatten-hf's evaluation windows, so the numbers compare with `flatten-hf ppl`)."""
    windows = torch.load(windows_path)
    result = {}
    for name, model in (("transformers", _reference(model_dir)), ("export", exported)):
        nll = 0.0
        with torch.no_grad():
            for window in windows:
                ids = window[None]
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1].float()
                nll += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
        result[name] = float(torch.tensor(nll / (windows.shape[0] * (windows.shape[1] - 1))).exp())
    return result


def main(argv: list[str], tool: str, export: Callable[[str, str], None], load: Callable[[str], object]) -> None:
    """`SCRIPT MODEL_DIR OUT_DIR` exports; `--check` and `--windows IDS.pt` compare an export with
    transformers and print one JSON line (what `flatten_hf.export` reads back)."""
    p = argparse.ArgumentParser(description=f"{tool} export of a stock or Flattened checkpoint.")
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("--check", action="store_true", help="compare an export with transformers (prints JSON)")
    p.add_argument("--windows", default=None, help="perplexity of both on these saved token windows (prints JSON)")
    args = p.parse_args(argv)
    if args.windows:
        print(json.dumps(window_perplexity(args.model_dir, load(args.out_dir), args.windows)))
    elif args.check:
        print(json.dumps(check_export(args.model_dir, load(args.out_dir))))
    else:
        export(args.model_dir, args.out_dir)
