"""The method registry: every compression method declares itself once, here, from its own module.

Modelled on PEFT's `register_peft_method`: a method module defines its config dataclass and run
function and calls `register_method(MethodSpec(...))` at import. Everything that lists methods reads
this registry instead of keeping a table of its own: `flatten_hf.compress` (name -> config and run),
the CLI (one option group per method, generated from the config's fields), the model card (title,
paper, summary, citation, the reproduce command) and the report (a row's label).

A config field becomes a CLI flag when it is declared with `option(...)`, which keeps the help text
next to the default: `ridge_factor: float = option(0.1, "ridge lambda ...")` is `--ridge-factor`.
Boolean options that default to True are switched off with `--no-<name>`; those that default to
False are switched on with `--<name>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..checks import check_value

DEPTH_FIELDS = ("num_layers", "ratio")  # every method's depth, given by --num-layers / --ratio


def option(default: Any, help: str, *, type: Callable | None = None, choices: Sequence[str] | None = None,
           check: str | None = None) -> Any:
    """A config field that is also a CLI flag of its method (see the module docstring).

    `type` is needed only when the default is None (e.g. an optional int); otherwise it is the
    default's type. `check` names a rule of `flatten_hf.checks.RULES` ('positive', 'non_negative',
    'fraction'): `check_options` enforces it on the config, the CLI on the flag before any compute.
    """
    return dataclasses.field(default=default, metadata={"help": help, "type": type, "choices": choices,
                                                        "check": check})


def check_options(config: Any) -> None:
    """Raise `ValueError` naming the field for an option outside its declared rule or choices."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("check"):
            check_value(f.name, value, f.metadata["check"])
        if f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise ValueError(f"{f.name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}.")
    for name in DEPTH_FIELDS:
        check_value(name, getattr(config, name), "non_negative")


@dataclass(frozen=True)
class CliOption:
    """One method option as the CLI and the card's reproduce command see it."""

    name: str  # the config field
    flag: str  # e.g. --ridge-factor, --no-prune
    default: Any
    help: str
    type: Callable | None
    choices: Sequence[str] | None
    check: str | None = None

    @property
    def is_switch(self) -> bool:
        return isinstance(self.default, bool)

    def to_argv(self, value: Any) -> list[str]:
        """The flag (and value) that sets this option to `value`; nothing when it is the default."""
        if value == self.default:
            return []
        return [self.flag] if self.is_switch else [self.flag, str(value)]


@dataclass(frozen=True)
class MethodSpec:
    """What flatten-hf knows about one method.

    Args:
        name: the `--method` value and the plan's `method`.
        config_class: its options, a dataclass with `num_layers` and `ratio` plus `option(...)` fields.
        run: `(model, runner, config) -> (MergePlan, layer states)`. The model may be streamed (its layers
            read from disk when indexed, see `flatten_hf.streaming`): a method reaches layers only as
            `model.model.layers[i]` and collects its new layers in `new_layer_states(model)`.
        title, paper, summary, citation: the model card's text (paper as a Markdown link); `summary` may be a
            function of the plan's `method_params`, where what was done depends on the options.
        label: the report's name of a variant, from the plan's `method_params` (default: the name).
        check: `(config, model_config) -> None`, raising `ValueError` for options that do not fit the model
            (e.g. layer indices past its depth); run before any calibration, so bad input costs no compute.
    """

    name: str
    config_class: type
    run: Callable
    title: str
    paper: str
    summary: str | Callable[[dict], str]
    citation: str
    label: Callable[[dict], str] | None = None
    check: Callable[[Any, Any], None] | None = None

    def options(self) -> list[CliOption]:
        """The config fields declared with `option(...)`, in declaration order."""
        out = []
        for f in dataclasses.fields(self.config_class):
            if "help" not in f.metadata:
                continue
            flag = f.name.replace("_", "-")
            if f.default is True:
                flag = f"no-{flag}"
            out.append(CliOption(f.name, f"--{flag}", f.default, f.metadata["help"],
                                 f.metadata["type"] or type(f.default), f.metadata["choices"], f.metadata["check"]))
        return out

    def summary_of(self, params: dict) -> str:
        return self.summary(params) if callable(self.summary) else self.summary

    def label_of(self, params: dict) -> str:
        return self.label(params) if self.label else self.name


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry (once per name)."""
    if spec.name in METHODS and METHODS[spec.name] is not spec:
        raise ValueError(f"A method named {spec.name!r} is already registered.")
    missing = [f for f in DEPTH_FIELDS if f not in {x.name for x in dataclasses.fields(spec.config_class)}]
    if missing:
        raise TypeError(f"{spec.config_class.__name__} must have the depth fields {missing}.")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose from {', '.join(sorted(METHODS))}.")
    return METHODS[name]
