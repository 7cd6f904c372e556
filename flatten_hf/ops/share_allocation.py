"""CoMe's split of one layer's width between the layers it merges.

Each merged layer gets a share of heads and channels proportional to its Block Influence (a layer
that turns the residual stream more keeps more of itself); the counts are rounded so that the merged
layer has exactly the original width and the architecture stays uniform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def influence_shares(block_influences: Sequence[float]) -> list[float]:
    """r_i = BI_i / sum_j BI_j (CoMe's `block_ratio` at its defaults psu=1, min_max=0)."""
    scores = [max(float(b), 0.0) for b in block_influences]
    total = sum(scores)
    if total <= 0:
        return [1.0 / len(scores)] * len(scores)
    return [s / total for s in scores]


def distribute_and_round(shares: Sequence[float], total: int) -> list[int]:
    """Counts that sum to `total`: floor(total * r_i) for every layer but the largest share, which
    takes the remainder (CoMe's `distribute_and_round`)."""
    largest = max(range(len(shares)), key=lambda i: shares[i])
    counts = [math.floor(total * r) for r in shares]
    counts[largest] = total - sum(c for i, c in enumerate(counts) if i != largest)
    return counts



def cap_counts(counts: Sequence[int], caps: Sequence[int]) -> list[int]:
    """`counts` with none above its cap, the excess moved to the members with room (in order), same sum.

    A member can give no more heads or channels than it has: with inputs of per-layer widths a
    narrow member's share of a merged layer may exceed its own width.
    """
    if sum(counts) > sum(caps):
        raise ValueError(f"Cannot take {sum(counts)} units from members holding {sum(caps)}.")
    out = [min(c, cap) for c, cap in zip(counts, caps)]
    excess = sum(counts) - sum(out)
    for i, cap in enumerate(caps):
        take = min(excess, cap - out[i])
        out[i] += take
        excess -= take
    return out
