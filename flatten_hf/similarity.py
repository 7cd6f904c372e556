"""Similarity of hidden states across layers, the signal every depth-compression method ranks by."""

from __future__ import annotations

import torch


def mean_token_cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Mean over all tokens of cos(a_t, b_t), computed in float32; `a` and `b` are lists of [B, L, d] batches."""
    total, count = 0.0, 0
    for x, y in zip(a, b):
        cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
        total += cos.sum().item()
        count += cos.numel()
    return total / count


def block_influence(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """ShortGPT's Block Influence, BI = 1 - E_t[cos(x_in, x_out)]: how much a block turns the residual stream."""
    return 1.0 - mean_token_cosine(inputs, outputs)
