"""Checks of user-given numbers, devices and weights, shared by the Python API and the CLI.

Each numeric rule has a name (`positive`, `non_negative`, `fraction`) so that a config field can
declare it once (`option(..., check="positive")`, see `methods.registry`) and get both a `ValueError`
naming the field from the library and an argparse error naming the flag from the CLI, before any
compute. The same rule then holds in both places: `--max-group-size 0` cannot mean "no limit" on the
command line and be an error in Python.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import torch

# name -> (predicate, how the rule reads in a message)
RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "positive": (lambda v: v > 0, "> 0"),
    "non_negative": (lambda v: v >= 0, ">= 0"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def problem(value: Any, rule: str) -> str | None:
    """Why `value` breaks `rule` (None if it does not): a finite real number that satisfies the predicate."""
    predicate, text = RULES[rule]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"must be a finite number {text}, got {value!r}"
    if not predicate(value):
        return f"must be {text}, got {value!r}"
    return None


def check_value(name: str, value: Any, rule: str) -> None:
    """Raise `ValueError` naming `name` when `value` breaks `rule`; None passes (an unset optional)."""
    if value is None:
        return
    why = problem(value, rule)
    if why:
        raise ValueError(f"{name} {why}.")


def argparse_type(parse: Callable[[str], Any], rule: str | None) -> Callable[[str], Any]:
    """An argparse `type=` that parses and then checks, so that the error names the flag and the value."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {getattr(parse, '__name__', 'a value')}, got {text!r}") from None
        why = problem(value, rule) if rule else None
        if why:
            raise argparse.ArgumentTypeError(why)
        return value

    convert.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its messages
    return convert


def check_positions(seq_len: int, config: Any, name: str = "--seq-len") -> None:
    """Refuse windows longer than the model's positions: beyond them RoPE extrapolates, which gives a
    number, but not a meaningful one."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions and seq_len > positions:
        raise ValueError(f"{name} {seq_len} exceeds the model's max_position_embeddings {positions}.")


AUTO_DEVICE = "auto"  # accelerate's device_map="auto": the model spread over the GPUs and the CPU


def check_device(device: str | None, allow_auto: bool = False) -> None:
    """Refuse a device torch cannot use here, naming what to pass instead (`auto` where `allow_auto`)."""
    if device is None or (allow_auto and device == AUTO_DEVICE):
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        auto = ", or auto (spread over the GPUs and the CPU)" if allow_auto else ""
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N{auto}.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                             "use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"--device {device}: flatten-hf runs on cpu or cuda.")


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters holding NaN or infinite values (a corrupted or diverged checkpoint)."""
    return [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]


def check_finite(model: torch.nn.Module, what: str) -> None:
    """Refuse a model with NaN/inf weights: every statistic computed from it would be NaN."""
    bad = non_finite_parameters(model)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ValueError(f"{what} has NaN or infinite weights ({bad[0]}{more}); it cannot be compressed. Check the "
                         "checkpoint (a failed download or a diverged training run).")
