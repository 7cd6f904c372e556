"""Pure functions over one decoder layer's state dict: select heads/channels, concatenate layers.

A decoder layer's parameters fall into a few roles, the same for LLaMA and Qwen2 (which differ only
in which biases exist):

- rows indexed by query head: `q_proj`; columns indexed by query head: `o_proj`;
- rows indexed by key/value head: `k_proj`, `v_proj`;
- rows indexed by MLP channel: `gate_proj`, `up_proj`; columns indexed by MLP channel: `down_proj`;
- output biases (`o_proj.bias`, `down_proj.bias`), which add to the residual stream once per branch;
- the two RMSNorm weights.
"""

from __future__ import annotations

import torch

LayerState = dict[str, torch.Tensor]

# parameter name -> (index kind, dim): which index list selects along which dimension
INDEXED_PARAMS: dict[str, tuple[str, int]] = {
    "self_attn.q_proj.weight": ("q", 0),
    "self_attn.q_proj.bias": ("q", 0),
    "self_attn.k_proj.weight": ("kv", 0),
    "self_attn.k_proj.bias": ("kv", 0),
    "self_attn.v_proj.weight": ("kv", 0),
    "self_attn.v_proj.bias": ("kv", 0),
    "self_attn.o_proj.weight": ("q", 1),
    "mlp.gate_proj.weight": ("mlp", 0),
    "mlp.gate_proj.bias": ("mlp", 0),
    "mlp.up_proj.weight": ("mlp", 0),
    "mlp.up_proj.bias": ("mlp", 0),
    "mlp.down_proj.weight": ("mlp", 1),
}
OUTPUT_BIASES = ("self_attn.o_proj.bias", "mlp.down_proj.bias")
NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")


def _expand_heads(heads: list[int], head_dim: int) -> torch.Tensor:
    """Row indices of the given heads in a `[heads * head_dim, ...]` projection."""
    idx = torch.as_tensor(heads, dtype=torch.long)
    return (idx[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def select(state: LayerState, q_heads: list[int], kv_heads: list[int], mlp_channels: list[int],
           head_dim: int) -> LayerState:
    """Keep the given heads and channels, in the given order; norms and output biases are untouched."""
    index = {"q": _expand_heads(q_heads, head_dim), "kv": _expand_heads(kv_heads, head_dim),
             "mlp": torch.as_tensor(mlp_channels, dtype=torch.long)}
    out = {}
    for name, tensor in state.items():
        if name in INDEXED_PARAMS:
            kind, dim = INDEXED_PARAMS[name]
            out[name] = tensor.index_select(dim, index[kind].to(tensor.device)).contiguous()
        else:
            out[name] = tensor.clone()
    return out


def concat(states: list[LayerState]) -> LayerState:
    """One wide layer running all members' heads side by side, then all members' MLP channels.

    Exact only for norm-folded members (unit norm weights): a wide layer has one norm per sublayer.
    Output biases add up, since every member's branch adds its own bias to the residual stream.
    """
    for s in states:
        for norm in NORMS:
            if not torch.all(s[norm] == 1):
                raise ValueError(f"concat needs norm-folded layers ({norm} must be all ones); call fold_norms first.")
    return _concat(states, [1.0] * len(states), norm=lambda tensors: tensors[0].clone())


def concat_averaged_norms(states: list[LayerState], shares: list[float]) -> LayerState:
    """CoMe's concatenation of layers whose norms were *not* folded: each norm weight becomes the mean
    of the members' (an approximation: a member whose norm differs from the mean sees a rescaled
    input), and output biases are weighted by the members' shares."""
    return _concat(states, shares, norm=lambda tensors: torch.stack(tensors).float().mean(0).to(tensors[0].dtype))


def _concat(states: list[LayerState], bias_weights: list[float], norm) -> LayerState:
    out: LayerState = {}
    for name in states[0]:
        tensors = [s[name] for s in states]
        if name in INDEXED_PARAMS:
            out[name] = torch.cat(tensors, dim=INDEXED_PARAMS[name][1])
        elif name in OUTPUT_BIASES:
            out[name] = sum(w * t for w, t in zip(bias_weights, tensors))
        else:
            out[name] = norm(tensors)
    return out
