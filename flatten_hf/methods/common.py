"""Helpers shared by the compression methods."""

from __future__ import annotations


def layers_to_remove(num_layers_total: int, num_layers: int | None, ratio: float | None) -> int:
    """How many decoder layers a method removes, from `--num-layers` or `--ratio` (fraction of layers).

    Exactly one of the two must be given; the result leaves at least one layer.
    """
    if (num_layers is None) == (ratio is None):
        raise ValueError("Give exactly one of num_layers (layers to remove) or ratio (fraction of decoder layers).")
    if ratio is not None:
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {ratio}.")
        num_layers = round(ratio * num_layers_total)
    if not 0 < num_layers < num_layers_total:
        raise ValueError(
            f"Cannot remove {num_layers} of {num_layers_total} decoder layers; choose between 1 and {num_layers_total - 1}."
        )
    return num_layers
