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

