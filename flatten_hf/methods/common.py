"""Helpers shared by the compression methods."""

from __future__ import annotations


def layers_to_remove(num_layers_total: int, num_layers: int | None, ratio: float | None) -> int:
    """How many decoder layers a method removes, from `--num-layers` or `--ratio` (fraction of layers).

    Exactly one of the two must be given; the result leaves at least one layer. Removing none is
    allowed: it yields the same model rebuilt from a plan, a reference for round-trip checks.
    """
    if (num_layers is None) == (ratio is None):
        raise ValueError("Give exactly one of num_layers (layers to remove) or ratio (fraction of decoder layers).")
    if ratio is not None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}.")
        num_layers = round(ratio * num_layers_total)
        if ratio > 0 and num_layers == 0:
            raise ValueError(f"ratio {ratio} of {num_layers_total} decoder layers rounds to 0 layers; give a larger "
                             "ratio, or --num-layers.")
    if not 0 <= num_layers < num_layers_total:
        raise ValueError(
            f"Cannot remove {num_layers} of {num_layers_total} decoder layers; choose between 0 and {num_layers_total - 1}."
        )
    return num_layers
