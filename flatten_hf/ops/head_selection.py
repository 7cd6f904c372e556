"""Attention pruning of a wide (flattened) block at key/value-group granularity.

A key/value group is one key/value head with its `n_rep` query heads; keeping whole groups keeps the
GQA pairing intact. A selection is scored by the error it actually causes on the attention branch's
target output T (accumulated statistics of the pre-`o_proj` head outputs Z):

    err(S) = || Z_S W_S' - T ||^2,   W_S' = W_S (no refit) or the least-squares refit of o_proj.

When the number of candidate selections is small (SmolLM2: 6 groups choose 3 = 20) every one is
scored exactly; otherwise two selections compete: the groups ranked by FlattenGPT's head importance
(the energy a head writes into the residual stream: E ||z_i||^2 weighted by the squared norms of its
o_proj columns), and greedy forward selection by the refit error, which sees what a ranking cannot:
two heads that write the same thing are worth one.
"""

from __future__ import annotations

import itertools
import math

import torch

from .compensation import least_squares_refit, residual_error


def query_heads(kv_heads: list[int], n_rep: int) -> list[int]:
    """The query heads that attend with the given key/value heads, group by group.

    Under GQA query head h reads key/value head h // n_rep (`repeat_kv`), so key/value head g owns the
    *contiguous* query heads g*n_rep ... g*n_rep + n_rep - 1. (Tiling a key/value mask n_rep times
    instead, as CoMe's released code does, pairs queries with the wrong keys.)
    """
    return [g * n_rep + r for g in kv_heads for r in range(n_rep)]


def group_columns(groups: list[int] | torch.Tensor, n_rep: int, head_dim: int) -> torch.Tensor:
    """Indices of the o_proj input columns (= q_proj output rows) that belong to the given kv groups."""
    groups = torch.as_tensor(groups, dtype=torch.long)
    width = n_rep * head_dim
    return (groups[:, None] * width + torch.arange(width)).reshape(-1)


def head_importance(gram: torch.Tensor, w_o: torch.Tensor, n_rep: int, head_dim: int) -> torch.Tensor:
    """Importance of each kv group: sum over its channels of E[z_c^2] * ||W_o[c, :]||^2 (x @ W layout)."""
    energy = torch.diagonal(gram).double() * (w_o.double() ** 2).sum(1)
    return energy.view(-1, n_rep * head_dim).sum(1)


def greedy_selection(n_groups: int, keep: int, error) -> tuple[int, ...]:
    """Add one group at a time, each time the one whose addition leaves the smallest `error(groups)`.

    keep * n_groups evaluations instead of C(n_groups, keep): the fallback for wide blocks whose
    selections are too many to score one by one.
    """
    chosen: tuple[int, ...] = ()
    for _ in range(keep):
        rest = [g for g in range(n_groups) if g not in chosen]
        chosen = min((tuple(sorted(chosen + (g,))) for g in rest), key=error)
    return chosen


def select_kv_groups(gram: torch.Tensor, cross: torch.Tensor, target_sq: float, w_o: torch.Tensor, n_rep: int,
                     head_dim: int, keep: int, lam: float, refit: bool,
                     max_exhaustive: int = 4096) -> tuple[list[int], torch.Tensor, float]:
    """Choose `keep` kv groups of a wide attention; return them, the new o_proj rows and the error.

    Args:
        gram: Z^T Z of the pre-o_proj head outputs (float64, [H*d_h, H*d_h]).
        cross: Z^T T against the target attention output ([H*d_h, d]).
        target_sq: ||T||^2.
        w_o: o_proj in the x @ W layout ([H*d_h, d]).
        lam: ridge of the refit.
        refit: least-squares refit of o_proj on the kept heads, else keep the original rows.
    """
    n_groups = w_o.shape[0] // (n_rep * head_dim)

    def solve(groups: tuple[int, ...]) -> tuple[torch.Tensor, float]:
        cols = group_columns(list(groups), n_rep, head_dim).to(gram.device)
        g_ss, c_s, w_s = gram[cols][:, cols], cross[cols], w_o[cols]
        w = least_squares_refit(g_ss, c_s, w_s, lam) if refit else w_s.double()
        return w, residual_error(g_ss, c_s, target_sq, w)

    if math.comb(n_groups, keep) <= max_exhaustive:
        candidates = itertools.combinations(range(n_groups), keep)
    else:
        ranked = head_importance(gram, w_o, n_rep, head_dim).topk(keep).indices.sort().values
        candidates = [tuple(ranked.tolist()), greedy_selection(n_groups, keep, lambda g: solve(g)[1])]
    best = min(((groups, *solve(groups)) for groups in candidates), key=lambda item: item[2])
    return list(best[0]), best[1], best[2]
