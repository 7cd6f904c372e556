# Copyright 2026 The flatten-hf authors. Licensed under the Apache License, Version 2.0.
"""Configuration of depth-compressed ("flattened") LLaMA, Mistral, Qwen2 and Qwen3 models.

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

from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

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
    """Inverse of `encode_indices`; also accepts a plain int list. Raises `ValueError` on anything else."""
    if isinstance(spec, list):
        if not all(type(i) is int for i in spec):
            raise ValueError(f"an index list must hold integers, got {spec!r:.80}")
        return list(spec)
    if not isinstance(spec, str):
        raise ValueError(f"expected a range string such as '0-2,5' or an int list, got {type(spec).__name__}")
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        lo, sep, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise ValueError(f"{part!r} is not an index or a range 'a-b' (in {spec!r:.80})") from None
    return out


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass, and True is not a layer count


def check_merge_plan(plan: Any, num_hidden_layers: int, dense_sizes: dict[str, int]) -> dict[str, list[int]]:
    """Check a merge plan's structure and ranges; return the per-layer sizes it implies.

    `dense_sizes` maps each per-layer field to the base model's width (the config's global fields):
    a source slice indexes heads and channels of an *original* layer, so its indices must lie below
    those. Raises `ValueError` naming the plan field and the layer, so that a hand-edited or corrupted
    `config.json` fails on load instead of building a model of the wrong shape.
    """
    if not isinstance(plan, dict):
        raise ValueError(f"flatten (the merge plan) must be a mapping, got {type(plan).__name__}.")
    version = plan.get("format_version")
    if not _is_int(version) or version != MERGE_PLAN_FORMAT_VERSION:
        raise ValueError(f"flatten.format_version is {version!r}; this code reads version {MERGE_PLAN_FORMAT_VERSION}. "
                         "Upgrade flatten-hf to read newer checkpoints.")
    for key in ("method", "base_model", "base_model_type"):
        if not isinstance(plan.get(key, ""), str):
            raise ValueError(f"flatten.{key} must be a string, got {type(plan[key]).__name__}.")
    if not isinstance(plan.get("method_params", {}), dict):
        raise ValueError("flatten.method_params must be a mapping.")
    n_source = plan.get("source_num_hidden_layers")
    if not _is_int(n_source) or n_source <= 0:
        raise ValueError(f"flatten.source_num_hidden_layers must be a positive integer, got {n_source!r}.")
    layers = plan.get("layers")
    if not isinstance(layers, list) or len(layers) != num_hidden_layers:
        got = len(layers) if isinstance(layers, list) else type(layers).__name__
        raise ValueError(f"flatten.layers must list one entry per decoder layer (num_hidden_layers="
                         f"{num_hidden_layers}), got {got}.")
    sizes: dict[str, list[int]] = {field: [] for field in PER_LAYER_FIELDS}
    groups = []
    for i, layer in enumerate(layers):
        sources = layer.get("sources") if isinstance(layer, dict) else None
        if not isinstance(sources, list) or not sources:
            raise ValueError(f"flatten.layers[{i}].sources must be a non-empty list of source slices.")
        totals = dict.fromkeys(PER_LAYER_FIELDS, 0)
        groups.append([])
        for j, src in enumerate(sources):
            where = f"flatten.layers[{i}].sources[{j}]"
            if not isinstance(src, dict):
                raise ValueError(f"{where} must be a mapping with layer, q_heads, kv_heads and mlp_channels.")
            source_layer = src.get("layer")
            if not _is_int(source_layer) or not 0 <= source_layer < n_source:
                raise ValueError(f"{where}.layer is {source_layer!r}; it must be an original layer index in "
                                 f"[0, {n_source}) (source_num_hidden_layers).")
            groups[-1].append(source_layer)
            for key, field in SOURCE_INDEX_FIELDS.items():
                if key not in src:
                    raise ValueError(f"{where} has no {key}.")
                try:
                    indices = decode_indices(src[key])
                except ValueError as e:
                    raise ValueError(f"{where}.{key}: {e}.") from None
                bound = dense_sizes[field]
                bad = [k for k in indices if not 0 <= k < bound]
                if bad:
                    raise ValueError(f"{where}.{key} names {bad[0]}, outside the original layer's [0, {bound}).")
                if len(set(indices)) != len(indices):
                    raise ValueError(f"{where}.{key} lists an index twice.")
                totals[field] += len(indices)
        for field, total in totals.items():
            sizes[field].append(total)
    if "merge_plan" in plan and plan["merge_plan"] != groups:
        raise ValueError("flatten.merge_plan disagrees with the source layers of flatten.layers; the layers are the "
                         "source of truth, so fix or drop merge_plan.")
    return sizes


def per_layer_sizes_from_plan(plan: dict[str, Any]) -> dict[str, list[int]]:
    """Derive the three per-layer size lists from a merge plan: a new layer is as wide as what it kept."""
    sizes: dict[str, list[int]] = {field: [] for field in PER_LAYER_FIELDS}
    for layer in plan["layers"]:
        for key, field in SOURCE_INDEX_FIELDS.items():
            sizes[field].append(sum(len(decode_indices(src[key])) for src in layer["sources"]))
    return sizes


class FlattenConfig:
    """Per-layer widths and the merge plan, mixed into a stock config (`LlamaConfig`, `Qwen2Config`, ...).

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
    implementation serves every base architecture (see `FlattenLlamaConfig`, `FlattenQwen2Config`, ...).
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
        derived = self.check_plan() if self.flatten else {}
        for field, global_field in PER_LAYER_FIELDS.items():
            if getattr(self, field) is None:
                default = derived.get(field) or [getattr(self, global_field)] * self.num_hidden_layers
                setattr(self, field, [int(v) for v in default])

    def check_plan(self) -> dict[str, list[int]]:
        """Check the merge plan against this config (see `check_merge_plan`); return the sizes it implies."""
        dense = {field: getattr(self, global_field) for field, global_field in PER_LAYER_FIELDS.items()}
        return check_merge_plan(self.flatten, self.num_hidden_layers, dense)

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
                if not _is_int(v) or v <= 0:
                    raise ValueError(f"{field}[{i}] must be a positive integer, got {v!r} (layer {i}).")
        for i, (heads, kv) in enumerate(zip(self.num_attention_heads_per_layer, self.num_key_value_heads_per_layer)):
            if heads % kv != 0:
                raise ValueError(
                    f"Layer {i}: num_attention_heads_per_layer[{i}]={heads} is not divisible by "
                    f"num_key_value_heads_per_layer[{i}]={kv}; every key/value head needs the same number of query heads."
                )
        if self.flatten:
            self._check_plan_widths()

    def _check_plan_widths(self) -> None:
        derived = self.check_plan()
        for field, values in derived.items():
            for i, (want, got) in enumerate(zip(values, getattr(self, field))):
                if want != got:
                    raise ValueError(
                        f"{field}[{i}]={got} disagrees with the merge plan, whose layer {i} keeps {want}; "
                        "the plan is the source of truth, so fix or drop the per-layer list."
                    )
        for i, layer in enumerate(self.flatten["layers"]):
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


class FlattenMistralConfig(FlattenConfig, MistralConfig):
    r"""Configuration of a `FlattenedMistralForCausalLM`: a `MistralConfig` plus per-layer widths and a merge plan."""

    model_type = "flatten_mistral"
    __init__ = FlattenConfig.__init__


class FlattenQwen3Config(FlattenConfig, Qwen3Config):
    r"""Configuration of a `FlattenedQwen3ForCausalLM`: a `Qwen3Config` plus per-layer widths and a merge plan."""

    model_type = "flatten_qwen3"
    __init__ = FlattenConfig.__init__


__all__ = [
    "FlattenConfig",
    "FlattenLlamaConfig",
    "FlattenMistralConfig",
    "FlattenQwen2Config",
    "FlattenQwen3Config",
    "encode_indices",
    "decode_indices",
    "per_layer_sizes_from_plan",
    "check_merge_plan",
]
