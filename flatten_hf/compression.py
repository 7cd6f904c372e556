"""`flatten_hf.compress`: one entry point for every compression method."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from .adapters import adapter_for
from .assemble import assemble
from .calibration import LayerwiseRunner
from .checks import check_finite, check_positions, check_value
from .data import calibration_ids as make_calibration_ids
from .methods import METHODS, get_method
from .methods.common import layers_to_remove
from .methods.registry import check_options
from .plan import MergePlan, compose
from .sampling import SELF_SOURCE, sample_ids

logger = logging.getLogger(__name__)


@dataclass
class CalibrationConfig:
    """Where calibration text comes from and how much of it a method sees.

    Args:
        source: 'wikipedia' (offline default), 'wikitext2[:folder]', a local text file, 'self' (sequences
            sampled from the model itself: data-free, see `flatten_hf.sampling`), or a mixture of these
            joined by '+', e.g. 'wikipedia+self' (equal shares, interleaved so every batch mixes them).
        num_samples: number of calibration sequences.
        seq_len: tokens per sequence.
        batch_size: sequences per forward call in the layer-wise runner.
        seed: seed of the random window sampling.
        device: where layers run during calibration (default: where the model is).
    """

    source: str = "wikipedia"
    num_samples: int = 128
    seq_len: int = 512
    batch_size: int = 8
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        for name, rule in (("num_samples", "positive"), ("seq_len", "positive"), ("batch_size", "positive"),
                           ("seed", "non_negative")):
            value = getattr(self, name)
            if not isinstance(value, int):
                raise ValueError(f"calibration {name} must be an integer, got {value!r}.")
            check_value(f"calibration {name}", value, rule)
        if not self.source or any(not part for part in self.source.split("+")):
            raise ValueError(f"calibration source {self.source!r} names an empty part; e.g. 'wikipedia' or "
                             "'wikipedia+self'.")


def calibration_data(model: PreTrainedModel, tokenizer: Any, calibration: CalibrationConfig) -> torch.Tensor:
    """The `[N, L]` calibration ids `calibration` describes: text windows and/or samples from `model`.

    A mixture gives each part an equal share of the sequences (the first parts one more when N does
    not divide) and interleaves them row by row, so the prefix a method uses for cheap statistics
    (FlattenGPT's `similarity_tokens`) sees every part too.
    """
    parts = calibration.source.split("+")
    n, k = calibration.num_samples, len(parts)
    if n < k:
        raise ValueError(f"--calib-samples {n} is fewer than the {k} parts of --calib-source {calibration.source!r}.")
    chunks = []
    for i, part in enumerate(parts):
        count = n // k + (i < n % k)
        if part == SELF_SOURCE:
            chunks.append(sample_ids(model, tokenizer, count, calibration.seq_len, calibration.seed))
        else:
            chunks.append(make_calibration_ids(tokenizer, part, count, calibration.seq_len, calibration.seed))
    order = sorted(((row, i) for i, chunk in enumerate(chunks) for row in range(len(chunk))))
    return torch.stack([chunks[i][row] for row, i in order])


def method_config(method: str | Any, **kwargs: Any) -> tuple[str, Any]:
    """Resolve `method` (a name plus keyword arguments, or a ready config dataclass) to (name, config)."""
    if isinstance(method, str):
        return method, get_method(method).config_class(**kwargs)
    for name, spec in METHODS.items():
        if isinstance(method, spec.config_class):
            if kwargs:
                raise TypeError("Pass either a method config object or keyword arguments, not both.")
            check_options(method)  # again: a config's fields may have been changed since it was built
            return name, method
    raise TypeError(f"method must be a name or one of {[m.config_class.__name__ for m in METHODS.values()]}.")


def compress(
    model: PreTrainedModel,
    method: str | Any = "shortgpt",
    *,
    tokenizer: Any = None,
    calibration: CalibrationConfig | None = None,
    calibration_ids: torch.Tensor | None = None,
    stock_if_uniform: bool = True,
    base_model: str | None = None,
    **method_kwargs: Any,
) -> PreTrainedModel:
    """Compress a causal LM and return the new model, its merge plan in `config.flatten`.

    Any architecture with an adapter works (LLaMA, Mistral, Qwen2, Qwen3; see `flatten_hf.adapters`).

    Args:
        model: the dense (or already compressed) model; it is not modified.
        method: a registered method's name ('shortgpt', 'flattengpt', 'come', ...; see
            `flatten_hf.methods.METHODS`) or its config, such as `ShortGPTConfig(ratio=0.2)`.
        tokenizer: used to tokenize the calibration text (not needed with `calibration_ids`).
        calibration: calibration text settings, see `CalibrationConfig`.
        calibration_ids: ready `[N, L]` token ids, overriding `calibration`'s text settings.
        stock_if_uniform: return the stock class (e.g. `LlamaForCausalLM`) when every layer ends at
            the dense widths (loadable with no custom code), else always the `Flattened*` classes.
        base_model: the id recorded as `base_model` in the plan (default: the model's name or path).
        **method_kwargs: the method's options, e.g. `ratio=0.2` or `num_layers=6`.

    Example:
        >>> compressed = flatten_hf.compress(model, "shortgpt", tokenizer=tok, ratio=0.2)
    """
    adapter = adapter_for(model.config)
    name, config = method_config(method, **method_kwargs)
    # An already compressed input: its plan is checked now and the new one is composed with it below.
    previous = MergePlan.from_config(model.config) if getattr(model.config, "flatten", None) else None
    given_calibration, given_ids = calibration is not None, calibration_ids is not None
    calibration = calibration or CalibrationConfig()
    # Everything that can be checked without compute is checked here, before minutes of calibration.
    layers_to_remove(model.config.num_hidden_layers, config.num_layers, config.ratio)
    if calibration_ids is None and tokenizer is None:
        raise ValueError("compress needs a tokenizer to build calibration data, or ready calibration_ids.")
    seq_len = calibration.seq_len if calibration_ids is None else calibration_ids.shape[-1]
    check_positions(seq_len, model.config, "calibration seq_len")
    check_finite(model, "The model")
    if calibration_ids is not None and (calibration_ids.dim() != 2 or calibration_ids.numel() == 0):
        raise ValueError(f"calibration_ids must be a non-empty [N, L] tensor of token ids, got shape "
                         f"{tuple(calibration_ids.shape)}.")
    if calibration_ids is None:
        calibration_ids = calibration_data(model, tokenizer, calibration)
    start = time.perf_counter()
    runner = LayerwiseRunner(model, calibration_ids, calibration.batch_size, calibration.device)
    plan, layer_states = METHODS[name].run(model, runner, config)
    plan.base_model = base_model or model.config._name_or_path
    plan.base_model_type = adapter.model_type
    plan.method_params = {
        **{k: v for k, v in asdict(config).items() if v is not None},
        "calibration": {"source": calibration.source if given_calibration or not given_ids else "calibration_ids",
                        "num_samples": int(calibration_ids.shape[0]),
                        "seq_len": int(calibration_ids.shape[1]), "seed": calibration.seed},
        **plan.method_params,
    }
    recorded = compose(previous, plan, checkpoint=plan.base_model) if previous else None
    compressed = assemble(model, plan, layer_states, stock_if_uniform, recorded)
    logger.info("%s: %d -> %d layers in %.1f s", name, model.config.num_hidden_layers,
                compressed.config.num_hidden_layers, time.perf_counter() - start)
    return compressed
