"""Fold RMSNorm weights into the projections that read the normalised input.

RMSNorm(x) = x / rms(x) * alpha, and the next op is a linear map W, so
W (x / rms(x) * alpha) = (W diag(alpha)) (x / rms(x)). Scaling W's columns by alpha and setting the
norm weight to one is exact (up to float rounding). Biases are added after the matmul and stay as
they are. This is what lets layers with different norms share one normalised input when flattened.
"""

from __future__ import annotations

import torch

from .layer_weights import LayerRoles, LayerState


def fold_norms(state: LayerState, roles: LayerRoles) -> LayerState:
    """Return a copy of a decoder layer's state with both norm weights folded in (norms become ones).

    Per-head norms that sit between a projection and RoPE (Qwen3's q/k norms) are not folded: the
    normalisation undoes any scale folded into the projection before it.
    The product is formed in float32 at least, then cast back, so bf16 weights lose no more than one
    rounding.
    """
    out = dict(state)
    for norm, readers in roles.norm_readers.items():
        alpha = state[norm]
        compute = torch.promote_types(alpha.dtype, torch.float32)
        for name in readers:
            w = state[name]
            out[name] = (w.to(compute) * alpha.to(compute)[None, :]).to(w.dtype)
        out[norm] = torch.ones_like(alpha)
    return out
