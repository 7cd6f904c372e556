"""Similarity of hidden states across layers, the signal every depth-compression method ranks by."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """cos(x, y) over the last dimension in float32, with two zero vectors counted as identical (1, not 0).

    A block whose input and output are both zero (a dead layer) changes nothing; torch's cosine calls
    that 0, which would make ShortGPT rate such a block the most important of all.
    """
    x, y = x.float(), y.float()
    cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
    both_zero = (x.abs().amax(-1) == 0) & (y.abs().amax(-1) == 0)
    return torch.where(both_zero, torch.ones_like(cos), cos)


def mean_token_cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Mean over all tokens of cos(a_t, b_t), computed in float32; `a` and `b` are lists of [B, L, d] batches."""
    total, count = 0.0, 0
    for x, y in zip(a, b):
        cos = cosine(x, y)
        total += cos.sum().item()
        count += cos.numel()
    return total / count


def block_influence(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """ShortGPT's Block Influence, BI = 1 - E_t[cos(x_in, x_out)]: how much a block turns the residual stream."""
    return 1.0 - mean_token_cosine(inputs, outputs)


def lowest_influence(influences: Sequence[float], n: int) -> list[int]:
    """Indices of the `n` blocks with the lowest Block Influence, ascending: the ones ShortGPT removes."""
    return sorted(sorted(range(len(influences)), key=lambda i: influences[i])[:n])


def last_token_angular_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Mean over sequences of arccos(cos(a_T, b_T)) / pi at the last token T (Gromov et al., 2403.17887).

    The last token has seen the whole sequence, so it summarises what a span of layers does to it;
    CoMe scores a candidate pair of layers by this distance between the pair's input and output.
    """
    total, count = 0.0, 0
    for x, y in zip(a, b):
        cos = cosine(x[:, -1], y[:, -1])
        total += (torch.arccos(cos.clamp(-1.0, 1.0)) / torch.pi).sum().item()
        count += cos.numel()
    return total / count
