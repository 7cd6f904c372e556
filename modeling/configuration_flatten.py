# Copyright 2026 The flatten-hf authors. Licensed under the Apache License, Version 2.0.
"""Configuration of depth-compressed ("flattened") LLaMA and Qwen2 models.

This file travels with every non-uniform checkpoint written by flatten-hf and is loaded with
`trust_remote_code=True` where flatten-hf is not installed, so it imports only `torch`-free parts of
`transformers` and the standard library.

A flattened model has `num_hidden_layers` decoder layers, each with its own number of query heads,
key/value heads and MLP channels. The stock global fields (`num_attention_heads`,
`num_key_value_heads`, `intermediate_size`) keep the *dense* values of the base model so that stock
validators stay satisfied; the per-layer truth lives in three int lists, and the merge plan (which
original layers, heads and channels each new layer came from) lives under the `flatten` key.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import LlamaConfig, Qwen2Config

MERGE_PLAN_FORMAT_VERSION = 1
PER_LAYER_FIELDS = {
    "num_attention_heads_per_layer": "num_attention_heads",
    "num_key_value_heads_per_layer": "num_key_value_heads",
    "intermediate_size_per_layer": "intermediate_size",
}
# Merge-plan keys holding the kept indices of one source layer, and the per-layer field each sums into.
SOURCE_INDEX_FIELDS = {
    "q_heads": "num_attention_heads_per_layer",
    "kv_heads": "num_key_value_heads_per_layer",
    "mlp_channels": "intermediate_size_per_layer",
}


def encode_indices(indices: list[int]) -> str:
    """Write an index list compactly as ranges, e.g. `[0, 1, 2, 5, 7, 8]` -> `"0-2,5,7-8"`.

    MLP channel lists run to thousands of entries per layer; ranges keep `config.json` readable while
    staying exact. The order is preserved: the position of an index in the list is the position of
    that head or channel in the new layer.
    """
    parts: list[str] = []
    start = prev = None
    for i in indices:
        i = int(i)
        if start is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def decode_indices(spec: str | list[int]) -> list[int]:
    """Inverse of `encode_indices`; also accepts a plain int list."""
    if isinstance(spec, list):
        return [int(i) for i in spec]
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        lo, sep, hi = part.partition("-")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return out


def per_layer_sizes_from_plan(plan: dict[str, Any]) -> dict[str, list[int]]:
    """Derive the three per-layer size lists from a merge plan: a new layer is as wide as what it kept."""
    sizes: dict[str, list[int]] = {field: [] for field in PER_LAYER_FIELDS}
    for layer in plan["layers"]:
        for key, field in SOURCE_INDEX_FIELDS.items():
            sizes[field].append(sum(len(decode_indices(src[key])) for src in layer["sources"]))
    return sizes


class FlattenConfig:
    """Per-layer widths and the merge plan, mixed into a stock `LlamaConfig` / `Qwen2Config`.

    Args:
        num_attention_heads_per_layer (`list[int]`, *optional*):
            Query heads of each decoder layer. Defaults to the plan's counts, else the dense value.
        num_key_value_heads_per_layer (`list[int]`, *optional*):
            Key/value heads of each decoder layer (GQA groups).
        intermediate_size_per_layer (`list[int]`, *optional*):
            MLP channels of each decoder layer.
        flatten (`dict`, *optional*):
            The merge plan: `format_version`, `method`, `method_params`, `base_model`,
            `base_model_type`, `source_num_hidden_layers` and `layers`, one entry per new layer with
            its `sources` (original `layer` index plus kept `q_heads`, `kv_heads`, `mlp_channels`).

    The class is a mixin rather than a `PreTrainedConfig` subclass of its own so that one
    implementation serves every base architecture (see `FlattenLlamaConfig`, `FlattenQwen2Config`).
    """

    def __init__(
        self,
        num_attention_heads_per_layer: list[int] | None = None,
        num_key_value_heads_per_layer: list[int] | None = None,
        intermediate_size_per_layer: list[int] | None = None,
        flatten: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_attention_heads_per_layer = num_attention_heads_per_layer
        self.num_key_value_heads_per_layer = num_key_value_heads_per_layer
        self.intermediate_size_per_layer = intermediate_size_per_layer
        self.flatten = flatten
        if getattr(self, "head_dim", None) is None:
            # Qwen2Config declares no head_dim; per-layer copies with fewer heads would derive it wrongly.
            self.head_dim = self.hidden_size // self.num_attention_heads
        self._fill_per_layer_defaults()
        self.check_per_layer_config()

    def _fill_per_layer_defaults(self) -> None:
        derived = per_layer_sizes_from_plan(self.flatten) if self.flatten and self.flatten.get("layers") else {}
        for field, global_field in PER_LAYER_FIELDS.items():
            if getattr(self, field) is None:
                default = derived.get(field) or [getattr(self, global_field)] * self.num_hidden_layers
                setattr(self, field, [int(v) for v in default])

    def check_per_layer_config(self) -> None:
        """Raise `ValueError` naming the field and layer when the per-layer sizes or the plan are inconsistent.

        Named `check_…` rather than `validate`: `validate` is reserved by transformers' strict configs.
        """
        n = self.num_hidden_layers
        for field in PER_LAYER_FIELDS:
            values = getattr(self, field)
            if not isinstance(values, (list, tuple)) or len(values) != n:
                got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
                raise ValueError(
                    f"{field} must be a list with one entry per decoder layer (num_hidden_layers={n}), got {got}."
                )
            for i, v in enumerate(values):
                if not isinstance(v, int) or v <= 0:
                    raise ValueError(f"{field}[{i}] must be a positive integer, got {v!r} (layer {i}).")
        for i, (heads, kv) in enumerate(zip(self.num_attention_heads_per_layer, self.num_key_value_heads_per_layer)):
            if heads % kv != 0:
                raise ValueError(
                    f"Layer {i}: num_attention_heads_per_layer[{i}]={heads} is not divisible by "
                    f"num_key_value_heads_per_layer[{i}]={kv}; every key/value head needs the same number of query heads."
                )
        if self.flatten and self.flatten.get("layers") is not None:
            self._check_plan()

    def _check_plan(self) -> None:
        layers = self.flatten["layers"]
        if len(layers) != self.num_hidden_layers:
            raise ValueError(
                f"flatten.layers has {len(layers)} entries but num_hidden_layers={self.num_hidden_layers}; "
                "the merge plan needs one entry per decoder layer."
            )
        derived = per_layer_sizes_from_plan(self.flatten)
        for field, values in derived.items():
            for i, (want, got) in enumerate(zip(values, getattr(self, field))):
                if want != got:
                    raise ValueError(
                        f"{field}[{i}]={got} disagrees with the merge plan, whose layer {i} keeps {want}; "
                        "the plan is the source of truth, so fix or drop the per-layer list."
                    )
        for i, layer in enumerate(layers):
            n_rep = self.num_attention_heads_per_layer[i] // self.num_key_value_heads_per_layer[i]
            for src in layer["sources"]:
                n_q, n_kv = len(decode_indices(src["q_heads"])), len(decode_indices(src["kv_heads"]))
                if n_q != n_kv * n_rep:
                    raise ValueError(
                        f"flatten.layers[{i}] source layer {src['layer']}: keeps {n_q} query heads for {n_kv} "
                        f"key/value heads, but layer {i} pairs {n_rep} query heads with each key/value head."
                    )

    def layer_config(self, layer_idx: int) -> "FlattenConfig":
        """A shallow copy of this config that describes decoder layer `layer_idx` with the dense field names.

        The stock decoder layers read their sizes from the global fields at construction time, so a
        per-layer view lets us reuse them unchanged.
        """
        view = copy.copy(self)
        for field, global_field in PER_LAYER_FIELDS.items():
            setattr(view, global_field, getattr(self, field)[layer_idx])
        return view

    @property
    def is_uniform(self) -> bool:
        """True when every layer has the dense widths, so a stock checkpoint can represent the model."""
        return all(
            all(v == getattr(self, global_field) for v in getattr(self, field))
            for field, global_field in PER_LAYER_FIELDS.items()
        )


class FlattenLlamaConfig(FlattenConfig, LlamaConfig):
    r"""Configuration of a `FlattenedLlamaForCausalLM`: a `LlamaConfig` plus per-layer widths and a merge plan.

    ```python
    >>> from flatten_hf import FlattenLlamaConfig
    >>> config = FlattenLlamaConfig(num_hidden_layers=2, num_attention_heads_per_layer=[32, 16],
    ...                             num_key_value_heads_per_layer=[32, 16])
    ```"""

    model_type = "flatten_llama"
    # transformers (>= 5.4) turns every config subclass into a dataclass with a generated __init__
    # unless the class body defines one; name the mixin's explicitly so it is kept.
    __init__ = FlattenConfig.__init__


class FlattenQwen2Config(FlattenConfig, Qwen2Config):
    r"""Configuration of a `FlattenedQwen2ForCausalLM`: a `Qwen2Config` plus per-layer widths and a merge plan."""

    model_type = "flatten_qwen2"
    # transformers (>= 5.4) turns every config subclass into a dataclass with a generated __init__
    # unless the class body defines one; name the mixin's explicitly so it is kept.
    __init__ = FlattenConfig.__init__


__all__ = [
    "FlattenConfig",
    "FlattenLlamaConfig",
    "FlattenQwen2Config",
    "encode_indices",
    "decode_indices",
    "per_layer_sizes_from_plan",
]
