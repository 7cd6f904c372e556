"""Every registered method is complete: its flags parse, its card renders, its reproduce command round-trips."""

from __future__ import annotations

import shlex

import pytest
import torch

import flatten_hf
from flatten_hf.cli import build_parser
from flatten_hf.methods import METHODS, MethodSpec, option, register_method
from flatten_hf.methods.registry import CliOption

from .tiny import tiny_model

TEXT_EXAMPLES = {"fixed_groups": "0-1"}  # free-text options: a value valid for a 4-layer model losing one layer


def non_default(o: CliOption):
    """A valid value other than the default, for each kind of option."""
    if o.name in TEXT_EXAMPLES:
        return TEXT_EXAMPLES[o.name]
    if o.is_switch:
        return not o.default
    if o.choices:
        return next(c for c in o.choices if c != o.default)
    if o.default is None:
        return o.type(2)
    return o.type(o.default * 2) if o.default else o.type(0.5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_option_reaches_the_plan_the_card_and_back(tmp_path, name):
    spec = METHODS[name]
    options = {o.name: non_default(o) for o in spec.options()}
    model = tiny_model("llama", intermediate_size=96)
    ids = torch.randint(3, 90, (8, 16), generator=torch.Generator().manual_seed(0))
    compressed = flatten_hf.compress(model, name, calibration_ids=ids, num_layers=1, base_model="smollm2-135m",
                                     **options)
    out = flatten_hf.save_compressed(compressed, tmp_path / name, card_writer=flatten_hf.write_card)
    text = (out / "README.md").read_text()
    assert spec.title in text and spec.citation.splitlines()[0] in text
    command = next(line for line in text.splitlines() if line.startswith("flatten-hf compress"))
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.method == name and args.num_layers == 1
    assert {k: getattr(args, k) for k in options} == options
    # the flags a user types parse to the same config
    argv = ["compress", "--method", name, "--ratio", "0.2", "--out", "x"]
    for o in spec.options():
        argv += o.to_argv(options[o.name])
    parsed = build_parser().parse_args(argv)
    assert {k: getattr(parsed, k) for k in options} == options


def test_a_method_registered_from_outside_appears_in_the_cli_and_compress():
    from dataclasses import dataclass

    from flatten_hf.methods.shortgpt import shortgpt

    @dataclass
    class KeepFirstConfig:
        num_layers: int | None = None
        ratio: float | None = None
        strength: float = option(1.0, "a made-up option")

    spec = register_method(MethodSpec("test-only", KeepFirstConfig, lambda m, r, c: shortgpt(m, r, c), "Test", "", "", ""))
    try:
        args = build_parser().parse_args(["compress", "--method", "test-only", "--strength", "3", "--ratio", "0.5",
                                          "--out", "x"])
        assert args.strength == 3.0
        ids = torch.randint(3, 90, (4, 16), generator=torch.Generator().manual_seed(0))
        out = flatten_hf.compress(tiny_model("llama"), "test-only", calibration_ids=ids, num_layers=1, strength=3.0)
        assert out.config.num_hidden_layers == 3 and out.config.flatten["method_params"]["strength"] == 3.0
        with pytest.raises(ValueError, match="already registered"):
            register_method(MethodSpec("test-only", KeepFirstConfig, spec.run, "Other", "", "", ""))
    finally:
        METHODS.pop("test-only")
