"""Pure functions over one decoder layer's state dict: select heads/channels, concatenate layers.

A decoder layer's parameters fall into a few roles, which an architecture's adapter names once
(`LayerRoles`; see `flatten_hf.adapters`):

- rows indexed by query head (`q_proj`), columns indexed by query head (`o_proj`);
- rows indexed by key/value head (`k_proj`, `v_proj`);
- rows indexed by MLP channel (`gate_proj`, `up_proj`), columns indexed by MLP channel (`down_proj`);
- per-head weights on the head dimension (Qwen3's `q_norm`/`k_norm`): one `[head_dim]` vector shared
  by all heads in a stock layer, one row per head (`[heads, head_dim]`) once heads of different
  layers sit side by side;
- output biases (`o_proj.bias`, `down_proj.bias`), which add to the residual stream once per branch;
- the two pre-sublayer RMSNorm weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

LayerState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LayerRoles:
    """The role of every parameter and sublayer of one decoder layer, by name relative to the layer.

    Args:
        indexed: parameter -> (index kind "q" | "kv" | "mlp", dim it is indexed along); query and
            key/value kinds select `head_dim` rows or columns per head.
        per_head: parameter -> index kind of a weight applied to every head on the head dimension.
        output_biases: biases added to the residual stream by the attention and the MLP branch.
        norm_readers: each foldable pre-sublayer norm weight -> the projections reading its output.
        projections: the linear modules (LoRA's target modules).
        attention, mlp, attention_norm, mlp_norm: the four sublayers of a pre-norm decoder layer.
        attention_output, mlp_output: the projections writing each branch into the residual stream.
    """

    indexed: Mapping[str, tuple[str, int]]
    norm_readers: Mapping[str, tuple[str, ...]]
    output_biases: tuple[str, ...] = ("self_attn.o_proj.bias", "mlp.down_proj.bias")
    per_head: Mapping[str, str] = field(default_factory=dict)
    projections: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    attention: str = "self_attn"
    mlp: str = "mlp"
    attention_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"
    attention_output: str = "self_attn.o_proj"
    mlp_output: str = "mlp.down_proj"

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(self.norm_readers)

    def module(self, layer: nn.Module, role: str) -> nn.Module:
        """The sublayer playing `role` (e.g. "attention_output") in a decoder layer."""
        return layer.get_submodule(getattr(self, role))

    def weight_name(self, role: str, kind: str = "weight") -> str:
        """The state-dict key of a sublayer's weight or bias, e.g. ("mlp_output") -> "mlp.down_proj.weight"."""
        return f"{getattr(self, role)}.{kind}"


def _projection(kind: str, first: str, prefix: str) -> dict[str, tuple[str, int]]:
    return {f"{prefix}.{first}.weight": (kind, 0), f"{prefix}.{first}.bias": (kind, 0)}


def gated_decoder_roles(**overrides) -> LayerRoles:
    """The roles of a LLaMA-style layer (q/k/v/o attention, gate/up/down MLP, two RMSNorms), the layout
    LLaMA, Mistral, Qwen2 and Qwen3 share; `overrides` add what an architecture has on top."""
    indexed = {**_projection("q", "q_proj", "self_attn"), **_projection("kv", "k_proj", "self_attn"),
               **_projection("kv", "v_proj", "self_attn"), "self_attn.o_proj.weight": ("q", 1),
               **_projection("mlp", "gate_proj", "mlp"), **_projection("mlp", "up_proj", "mlp"),
               "mlp.down_proj.weight": ("mlp", 1)}
    norm_readers = {
        "input_layernorm.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        "post_attention_layernorm.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    }
    return LayerRoles(indexed=indexed, norm_readers=norm_readers, **overrides)


def _expand_heads(heads: list[int], head_dim: int) -> torch.Tensor:
    """Row indices of the given heads in a `[heads * head_dim, ...]` projection."""
    idx = torch.as_tensor(heads, dtype=torch.long)
    return (idx[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def select(state: LayerState, roles: LayerRoles, q_heads: list[int], kv_heads: list[int], mlp_channels: list[int],
           head_dim: int) -> LayerState:
    """Keep the given heads and channels, in the given order; norms and output biases are untouched
    (and so is a per-head weight that all heads share)."""
    index = {"q": _expand_heads(q_heads, head_dim), "kv": _expand_heads(kv_heads, head_dim),
             "mlp": torch.as_tensor(mlp_channels, dtype=torch.long)}
    rows = {"q": torch.as_tensor(q_heads, dtype=torch.long), "kv": torch.as_tensor(kv_heads, dtype=torch.long)}
    out = {}
    for name, tensor in state.items():
        if name in roles.indexed:
            kind, dim = roles.indexed[name]
            out[name] = tensor.index_select(dim, index[kind].to(tensor.device)).contiguous()
        elif name in roles.per_head and tensor.dim() == 2:
            out[name] = tensor.index_select(0, rows[roles.per_head[name]].to(tensor.device)).contiguous()
        else:
            out[name] = tensor.clone()
    return out


def _head_count(state: LayerState, roles: LayerRoles, kind: str, head_dim: int) -> int:
    name = next(n for n, (k, dim) in roles.indexed.items() if k == kind and dim == 0 and n in state)
    return state[name].shape[0] // head_dim


def per_head_rows(state: LayerState, roles: LayerRoles) -> LayerState:
    """The state with every per-head weight as one row per head (`[heads, head_dim]`), the layout of a
    layer whose heads may come from different original layers. A no-op for architectures without."""
    out = dict(state)
    for name, kind in roles.per_head.items():
        if name in state and state[name].dim() == 1:
            head_dim = state[name].shape[0]
            out[name] = state[name].expand(_head_count(state, roles, kind, head_dim), head_dim).clone()
    return out


def shared_per_head(state: LayerState, roles: LayerRoles) -> LayerState:
    """Inverse of `per_head_rows`: one shared vector per per-head weight, the stock layout. Raises
    `ValueError` when the rows differ (the layer's heads come from layers with different norms)."""
    out = dict(state)
    for name in roles.per_head:
        if name in state and state[name].dim() == 2:
            rows = state[name]
            if not torch.equal(rows, rows[:1].expand_as(rows)):
                raise ValueError(f"{name} has different rows per head; a stock layer shares one, so this layer "
                                 "needs the Flattened class.")
            out[name] = rows[0].clone()
    return out


def concat(states: list[LayerState], roles: LayerRoles) -> LayerState:
    """One wide layer running all members' heads side by side, then all members' MLP channels.

    Exact only for norm-folded members (unit norm weights): a wide layer has one norm per sublayer.
    Output biases add up, since every member's branch adds its own bias to the residual stream.
    Per-head weights (Qwen3's q/k norms) keep each member's, one row per head.
    """
    for s in states:
        for norm in roles.norms:
            if not torch.all(s[norm] == 1):
                raise ValueError(f"concat needs norm-folded layers ({norm} must be all ones); call fold_norms first.")
    return _concat(states, roles, [1.0] * len(states), norm=lambda tensors: tensors[0].clone())


def concat_averaged_norms(states: list[LayerState], roles: LayerRoles, shares: list[float]) -> LayerState:
    """CoMe's concatenation of layers whose norms were *not* folded: each norm weight becomes the mean
    of the members' (an approximation: a member whose norm differs from the mean sees a rescaled
    input), and output biases are weighted by the members' shares."""
    return _concat(states, roles, shares,
                   norm=lambda tensors: torch.stack(tensors).float().mean(0).to(tensors[0].dtype))


def _concat(states: list[LayerState], roles: LayerRoles, bias_weights: list[float],
            norm: Callable[[list[torch.Tensor]], torch.Tensor]) -> LayerState:
    states = [per_head_rows(s, roles) for s in states]
    out: LayerState = {}
    for name in states[0]:
        tensors = [s[name] for s in states]
        if name in roles.indexed:
            out[name] = torch.cat(tensors, dim=roles.indexed[name][1])
        elif name in roles.per_head:
            out[name] = torch.cat(tensors, dim=0)
        elif name in roles.output_biases:
            out[name] = sum(w * t for w, t in zip(bias_weights, tensors))
        else:
            out[name] = norm(tensors)
    return out
