"""The merge plan: which original layers, heads and channels each new decoder layer came from.

Every method returns a `MergePlan` plus the new layers' weights; the plan alone determines the
compressed architecture (see `flatten_hf.assemble`) and is stored under the `flatten` key of
`config.json`, so any reader can trace a new layer back to its sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .modeling.configuration_flatten import (
    MERGE_PLAN_FORMAT_VERSION,
    PER_LAYER_FIELDS,
    check_merge_plan,
    decode_indices,
    encode_indices,
    per_layer_sizes_from_plan,
)


@dataclass
class SourceSlice:
    """What one original layer contributes to a new layer, in the order it appears there.

    `q_heads` are listed key/value group by key/value group, so that query head j of the new layer
    attends with key/value head j // n_rep, as `repeat_kv` expects.
    """

    layer: int
    q_heads: list[int]
    kv_heads: list[int]
    mlp_channels: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "q_heads": encode_indices(self.q_heads),
            "kv_heads": encode_indices(self.kv_heads),
            "mlp_channels": encode_indices(self.mlp_channels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SourceSlice":
        return cls(int(d["layer"]), decode_indices(d["q_heads"]), decode_indices(d["kv_heads"]),
                   decode_indices(d["mlp_channels"]))

    @classmethod
    def whole(cls, layer: int, num_heads: int, num_kv_heads: int, intermediate_size: int) -> "SourceSlice":
        """The entire original layer: every head and channel kept."""
        return cls(layer, list(range(num_heads)), list(range(num_kv_heads)), list(range(intermediate_size)))


@dataclass
class MergePlan:
    """The provenance of a compressed model: one list of `SourceSlice`s per new decoder layer."""

    method: str
    source_num_hidden_layers: int
    layers: list[list[SourceSlice]]
    method_params: dict[str, Any] = field(default_factory=dict)
    # Filled in by `flatten_hf.compress`, which knows where the model came from.
    base_model: str = ""
    base_model_type: str = ""

    @property
    def groups(self) -> list[list[int]]:
        """The original layer indices behind each new layer, e.g. `[[0], [1], [2, 3], ...]`."""
        return [[s.layer for s in sources] for sources in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": MERGE_PLAN_FORMAT_VERSION,
            "method": self.method,
            "method_params": self.method_params,
            "base_model": self.base_model,
            "base_model_type": self.base_model_type,
            "source_num_hidden_layers": self.source_num_hidden_layers,
            "merge_plan": self.groups,
            "layers": [{"sources": [s.to_dict() for s in sources]} for sources in self.layers],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MergePlan":
        if d.get("format_version") != MERGE_PLAN_FORMAT_VERSION:
            raise ValueError(
                f"Unsupported merge-plan format_version {d.get('format_version')!r}; this flatten-hf reads "
                f"version {MERGE_PLAN_FORMAT_VERSION}. Upgrade flatten-hf to read newer checkpoints."
            )
        return cls(
            method=d["method"],
            base_model=d["base_model"],
            base_model_type=d["base_model_type"],
            source_num_hidden_layers=int(d["source_num_hidden_layers"]),
            layers=[[SourceSlice.from_dict(s) for s in layer["sources"]] for layer in d["layers"]],
            method_params=dict(d.get("method_params", {})),
        )

    @classmethod
    def from_config(cls, config: Any) -> "MergePlan":
        """The checked merge plan of a model config; `ValueError` naming the field and layer if it is broken.

        The Flattened config classes check their plan when they are built; a stock config
        carries the plan as an opaque dict, so it is checked here, and because a stock model has one
        width for every layer, the plan must keep exactly the dense heads and channels in each.
        """
        plan = getattr(config, "flatten", None)
        if not plan:
            name = getattr(config, "_name_or_path", "") or "the model"
            raise ValueError(f"{name} has no merge plan (config.flatten): it was not compressed by flatten-hf.")
        if not hasattr(config, "num_attention_heads_per_layer"):
            dense = {field: getattr(config, global_field) for field, global_field in PER_LAYER_FIELDS.items()}
            sizes = check_merge_plan(plan, config.num_hidden_layers, dense)
            for field, values in sizes.items():
                odd = [i for i, v in enumerate(values) if v != dense[field]]
                if odd:
                    raise ValueError(
                        f"flatten.layers[{odd[0]}] keeps {values[odd[0]]} of {field.removesuffix('_per_layer')}, but "
                        f"this stock {type(config).__name__} has {dense[field]} in every layer; the checkpoint "
                        "needs the Flattened classes (per-layer widths) or a corrected plan.")
        return cls.from_dict(plan)

    def per_layer_sizes(self) -> dict[str, list[int]]:
        return per_layer_sizes_from_plan(self.to_dict())


_INDEX_FIELDS = ("q_heads", "kv_heads", "mlp_channels")


def _through(parents: list[SourceSlice], piece: SourceSlice) -> list[SourceSlice]:
    """The original-layer slices behind `piece`, a slice of an intermediate layer built from `parents`.

    Intermediate index i of a field is the i-th entry of the parents' lists laid side by side; each
    parent contributes the entries `piece` picks from its span, in `piece`'s order. A parent that
    `piece` takes nothing from is dropped (as a method drops a member it pruned away), unless it was
    an empty record already (a layer ReplaceMe folded away) or `piece` is one (the intermediate layer
    itself was folded away): those stay, so the plan still says where every original layer went.
    """
    out = []
    starts = {f: 0 for f in _INDEX_FIELDS}
    for parent in parents:
        picked = {}
        for f in _INDEX_FIELDS:
            span = getattr(parent, f)
            lo = starts[f]
            picked[f] = [span[i - lo] for i in getattr(piece, f) if lo <= i < lo + len(span)]
            starts[f] += len(span)
        parent_empty = not any(getattr(parent, f) for f in _INDEX_FIELDS)
        piece_empty = not any(getattr(piece, f) for f in _INDEX_FIELDS)
        if any(picked.values()) or parent_empty or piece_empty:
            out.append(SourceSlice(parent.layer, picked["q_heads"], picked["kv_heads"], picked["mlp_channels"]))
    for f in _INDEX_FIELDS:  # the parents' picks, laid side by side, must be the piece's own order
        order = []
        lo = 0
        for parent in parents:
            n = len(getattr(parent, f))
            order += [i for i in getattr(piece, f) if lo <= i < lo + n]
            lo += n
        if order != getattr(piece, f):
            raise ValueError(f"A slice of layer {piece.layer} takes its {f} across source layers out of order; it "
                             "cannot be written as slices of the original layers.")
    return out


def compose(previous: MergePlan, step: MergePlan, checkpoint: str = "") -> MergePlan:
    """`step`, a plan over the layers of a model that `previous` produced, written over the ORIGINAL layers.

    Compressing a compressed checkpoint must not lose provenance: the result is one plan from the
    original model (its `base_model` and layer count) to the final one, each new layer's sources
    resolved through `previous`, heads and channels included, and `method_params["history"]` lists
    the earlier steps (method, options, depth, and the `checkpoint` the next step read).
    """
    if step.source_num_hidden_layers != len(previous.layers):
        raise ValueError(f"The plan covers {step.source_num_hidden_layers} layers, but the previous plan produced "
                         f"{len(previous.layers)}.")
    layers = [[s for piece in sources for s in _through(previous.layers[piece.layer], piece)]
              for sources in step.layers]
    earlier = dict(previous.method_params)
    history = earlier.pop("history", [])
    history = [*history, {"method": previous.method, "method_params": earlier,
                          "num_hidden_layers": len(previous.layers), "checkpoint": checkpoint}]
    return MergePlan(step.method, previous.source_num_hidden_layers, layers,
                     {**step.method_params, "history": history}, previous.base_model, previous.base_model_type)
