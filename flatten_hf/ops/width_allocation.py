"""Global width policy: one ranking of heads and channels across all flattened blocks.

Every unit (a key/value group with its query heads, or an MLP channel) of every wide block gets a
score; units are kept in order of score per parameter until the parameter budget is spent, so a
block whose attention matters more keeps more heads and fewer channels, and a block that matters
less overall gives parameters to one that matters more.
"""

from __future__ import annotations

import torch


def allocate_widths(kv_scores: list[torch.Tensor], channel_scores: list[torch.Tensor], kv_params: int,
                    channel_params: int, budget: int, min_kv: int = 1, min_channels: int = 1,
                    channel_multiple: int = 1) -> list[tuple[int, int]]:
    """Per block, how many key/value groups and MLP channels to keep within `budget` parameters.

    Each block keeps at least `min_kv` groups and `min_channels` channels (a layer needs both).
    With `channel_multiple` > 1, channels are kept in runs of that many (the block's next best ones,
    scored by their mean), so that every MLP width is a multiple of it: what a quantization format
    with blocks of that size along the down projection's rows needs (llama.cpp: 32 or 256).
    """
    step = channel_multiple
    min_channels = -(-min_channels // step) * step
    counts = [[min_kv, min_channels] for _ in kv_scores]
    spent = len(counts) * (min_kv * kv_params + min_channels * channel_params)
    if spent > budget:
        raise ValueError(f"A budget of {budget} parameters cannot hold the minimum widths ({spent}).")
    units = []  # (score per parameter, block, 0 = kv group / 1 = a run of `step` channels)
    for b, (kv, ch) in enumerate(zip(kv_scores, channel_scores)):
        if ch.numel() < min_channels:
            raise ValueError(f"A block of {ch.numel()} MLP channels cannot keep a multiple of {step}.")
        units += [(s / kv_params, b, 0) for s in kv.sort(descending=True).values[min_kv:].tolist()]
        rest = ch.sort(descending=True).values[min_channels:]
        rest = rest[: rest.numel() // step * step].view(-1, step).mean(dim=1)
        units += [(s / channel_params, b, 1) for s in rest.tolist()]
    for _, b, kind in sorted(units, key=lambda u: -u[0]):
        cost = kv_params if kind == 0 else channel_params * step
        if spent + cost <= budget:
            counts[b][kind] += 1 if kind == 0 else step
            spent += cost
    return [(kv, ch) for kv, ch in counts]


def equal_budget_splits(kv_params: int, channel_params: int, kv: int, channels: int, max_kv: int,
                        max_channels: int) -> list[tuple[int, int]]:
    """The ways to spend one layer's parameters (`kv` key/value groups and `channels` MLP channels) on
    attention and MLP: for every key/value count from half to twice `kv`, the most channels that fit.

    A flattened block of several layers may need more attention than one layer has (its members attend to
    different things) or less; the range is bounded so that the search stays a handful of refits. Splits
    the wide block cannot fill (more groups or channels than its members hold) are left out; the dense
    split is always first.
    """
    budget = kv * kv_params + channels * channel_params
    splits = [(kv, channels)]
    for k in range(max(1, kv // 2), 2 * kv + 1):
        c = (budget - k * kv_params) // channel_params
        if k != kv and k <= max_kv and 1 <= c <= max_channels:
            splits.append((k, int(c)))
    return splits
