"""Closed-form regularised least-squares compensation of an output projection.

After pruning the inputs of a projection W (o_proj over heads, down_proj over MLP channels) to a set
S, refit the kept rows so that the pruned layer reproduces a target output T as well as possible:

    W' = argmin_W  || Z_S W - T ||^2 + lam * || W - W_S ||^2
       = (Z_S^T Z_S + lam I)^-1 (Z_S^T T + lam W_S)

with Z the projection's inputs on calibration tokens (rows = tokens) and W_S the original kept rows
(in the x @ W convention, i.e. the transpose of `nn.Linear.weight`). When the target is the unpruned
output, T = Z W, this is FlattenGPT's Lemma 3.1, W' = (S^T C S + lam I)^-1 S^T (C + lam I) W. We only
need the Gram matrix C = Z^T Z and the cross term Z^T T, accumulated in float64 over the tokens, and
solve with a Cholesky factorisation (never a dense inverse).
"""

from __future__ import annotations

import torch


def ridge_lambda(gram: torch.Tensor, factor: float) -> float:
    """lam = factor x the mean eigenvalue of the Gram matrix (its trace over its size)."""
    return factor * (torch.trace(gram) / gram.shape[0]).item()


def stable_cholesky(a: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The Cholesky factor of the symmetric PSD `a` (float64), and the jitter added to its diagonal (0 if none).

    A Gram matrix can be numerically indefinite, or all zero when a layer's inputs vanish (a dead
    layer, a degenerate checkpoint); rather than a raw "not positive-definite" error, add a jitter of
    1e-6 x its mean eigenvalue (at least 1e-12) and factor again.
    """
    factor, info = torch.linalg.cholesky_ex(a)
    if info.item() == 0:
        return factor, 0.0
    eps = 1e-6 * max((torch.trace(a) / a.shape[0]).item(), 1e-12)
    return torch.linalg.cholesky(a + eps * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)), eps


def least_squares_refit(gram_ss: torch.Tensor, cross_s: torch.Tensor, w_s: torch.Tensor, lam: float) -> torch.Tensor:
    """Solve (gram_ss + lam I) W = cross_s + lam w_s for W (float64 Cholesky), shaped like `w_s`."""
    a = gram_ss.to(torch.float64, copy=True)  # shifted in place: one |S| x |S| copy, not three
    a.diagonal().add_(lam)
    b = cross_s.double() + lam * w_s.double()
    factor, eps = stable_cholesky(a)
    # The jitter is a little more ridge toward w_s, on both sides so that it stays a ridge toward w_s: a
    # zero Gram matrix then gives w_s itself, the only answer the data does not contradict.
    return torch.cholesky_solve(b + eps * w_s.double(), factor)


def nystrom_compensation(gram: torch.Tensor, keep: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """Lemma 3.1: the kept rows of `w` refit so that Z_S W' matches the unpruned Z W."""
    keep = keep.to(gram.device)
    return least_squares_refit(gram[keep][:, keep], gram[keep] @ w.double(), w[keep], lam)


def residual_error(gram_ss: torch.Tensor, cross_s: torch.Tensor, target_sq: float, w: torch.Tensor) -> float:
    """|| Z_S W - T ||^2 from the accumulated statistics, without touching the tokens again."""
    w = w.double()
    return target_sq - 2 * torch.sum(w * cross_s.double()).item() + torch.sum(w * (gram_ss.double() @ w)).item()


def relative_error(error: float, energy: float) -> float:
    """`error / energy`, with 0 when both vanish (a dead layer fitted exactly) and inf when only the energy does."""
    if energy > 0:
        return error / energy
    return 0.0 if error <= 0 else float("inf")
