"""MLP channel selection by ridge leverage scores (FlattenGPT, after MoDeGPT's Nyström compression).

The ridge leverage score of channel i, s_i = [C (C + lam I)^-1]_ii, measures how much of the
activation covariance C only that channel can explain; keeping the top-k channels gives the best
Nyström approximation of C in the ridge sense, and the dropped channels' contribution is then folded
into the kept ones by `compensation.least_squares_refit`.
"""

from __future__ import annotations

import torch

from .compensation import stable_cholesky


def ridge_leverage_scores(gram: torch.Tensor, lam: float, block: int = 1024) -> torch.Tensor:
    """diag(C (C + lam I)^-1) for the symmetric PSD C, in float64.

    It equals 1 - lam diag(A^-1) with A = C + lam I = L L^T, and diag(A^-1)_i is the squared norm of
    column i of L^-1, found a panel of `block` columns at a time by a triangular solve. Columns from j
    on need only the trailing block of L, but slicing it is a copy: panels take it once it is at most a
    quarter of L, and solve with the whole factor before. That is about a quarter of the flops of
    solving A X = C, and besides C and the factor at most a quarter-size copy is allocated. It matters
    for a wide MLP: a Llama-3-8B group of two layers has 28672 channels, and each n x n matrix of it is
    6.6 GB in float64 (3.3 GB in float32). C is shifted by lam in place for the factorisation and
    restored exactly, instead of being copied.
    """
    n = gram.shape[0]
    diagonal = gram.diagonal().clone()
    gram.diagonal().add_(lam)
    try:
        factor, jitter = stable_cholesky(gram)
    finally:
        gram.diagonal().copy_(diagonal)
    inverse_diagonal = torch.empty(n, dtype=torch.float64, device=gram.device)
    for start in range(0, n, block):
        end = min(start + block, n)
        offset = start if 2 * start >= n else 0
        triangle = factor[offset:, offset:] if offset else factor
        unit = torch.zeros(n - offset, end - start, dtype=factor.dtype, device=factor.device)
        unit[start - offset:end - offset].diagonal().fill_(1)
        columns = torch.linalg.solve_triangular(triangle, unit, upper=False)
        inverse_diagonal[start:end] = columns.double().pow(2).sum(0)
    return 1 - (lam + jitter) * inverse_diagonal  # a jitter is more ridge: C (C + (lam + jitter) I)^-1


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending index order (so kept channels keep their order)."""
    return torch.topk(scores, k).indices.sort().values
