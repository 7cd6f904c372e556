"""MLP channel selection by ridge leverage scores (FlattenGPT, after MoDeGPT's Nyström compression).

The ridge leverage score of channel i, s_i = [C (C + lam I)^-1]_ii, measures how much of the
activation covariance C only that channel can explain; keeping the top-k channels gives the best
Nyström approximation of C in the ridge sense, and the dropped channels' contribution is then folded
into the kept ones by `compensation.least_squares_refit`.
"""

from __future__ import annotations

import torch

from .compensation import stable_cholesky


def ridge_leverage_scores(gram: torch.Tensor, lam: float) -> torch.Tensor:
    """diag(C (C + lam I)^-1), solved with a Cholesky factorisation of C + lam I (C is symmetric PSD)."""
    c = gram.double()
    factor, _ = stable_cholesky(c + lam * torch.eye(c.shape[0], dtype=torch.float64, device=c.device))
    # (C + lam I)^-1 C is X with (C + lam I) X = C; diag(C (C + lam I)^-1) = diag(X^T) = diag(X).
    return torch.diagonal(torch.cholesky_solve(c, factor)).clone()


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending index order (so kept channels keep their order)."""
    return torch.topk(scores, k).indices.sort().values
