"""`flatten_hf.compress` (a model in memory) and `compress_checkpoint` (a checkpoint on disk, streamed
layer by layer): one entry point for every compression method."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel

from .adapters import adapter_for
from .assemble import assemble, compressed_config, write_checkpoint
from .calibration import LayerwiseRunner
from .checkpoint import check_output_dir, finish_checkpoint, local_checkpoint, staged_output
from .checks import check_finite, check_positions, check_value
from .data import calibration_ids as make_calibration_ids
from .methods import METHODS, get_method
from .methods.common import layers_to_remove
from .methods.registry import check_options
from .ops.layer_weights import LayerState
from .plan import MergePlan, compose
from .sampling import SELF_SOURCE, sample_ids
from .streaming import load_streamed_model, peak_rss_bytes

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


def _plan_and_layers(model: PreTrainedModel, method: str | Any, tokenizer: Any, calibration: CalibrationConfig | None,
                     calibration_ids: torch.Tensor | None, base_model: str | None, method_kwargs: dict
                     ) -> tuple[str, MergePlan, Sequence[LayerState], MergePlan | None]:
    """Check everything that needs no compute, calibrate, run the method: (name, plan, new layers, the
    plan to record when `model` was itself compressed)."""
    adapter = adapter_for(model.config)
    name, config = method_config(method, **method_kwargs)
    # An already compressed input: its plan is checked now and the new one is composed with it below.
    previous = MergePlan.from_config(model.config) if getattr(model.config, "flatten", None) else None
    given_calibration, given_ids = calibration is not None, calibration_ids is not None
    calibration = calibration or CalibrationConfig()
    # Everything that can be checked without compute is checked here, before minutes of calibration.
    layers_to_remove(model.config.num_hidden_layers, config.num_layers, config.ratio)
    if METHODS[name].check:
        METHODS[name].check(config, model.config)
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
    logger.info("%s: %d -> %d layers in %.1f s", name, model.config.num_hidden_layers, len(plan.layers),
                time.perf_counter() - start)
    return name, plan, layer_states, recorded


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
    For a checkpoint on disk that need not fit in memory, see `compress_checkpoint`.

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
    _, plan, layer_states, recorded = _plan_and_layers(model, method, tokenizer, calibration, calibration_ids,
                                                       base_model, method_kwargs)
    return assemble(model, plan, layer_states, stock_if_uniform, recorded)


def compress_checkpoint(
    model: str | os.PathLike,
    method: str | Any = "shortgpt",
    *,
    out_dir: str | os.PathLike,
    tokenizer: Any = None,
    calibration: CalibrationConfig | None = None,
    calibration_ids: torch.Tensor | None = None,
    stock_if_uniform: bool = True,
    base_model: str | None = None,
    dtype: str | torch.dtype = "float32",
    save_dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    card_writer: Callable[..., object] | None = None,
    resident_layers: int = 2,
    **method_kwargs: Any,
) -> Path:
    """Compress a checkpoint on disk into `out_dir` without ever holding the whole model in memory.

    The decoder layers are read from the safetensors shards when a method reaches them and run on
    `calibration.device` (default cpu), at most `resident_layers` cached; each finished layer is spilled
    to a scratch file in the staging folder and written into the output shards at the end, one layer
    at a time (see `flatten_hf.streaming`). Peak memory is the embeddings, a few layers and the
    calibration activations, whatever the depth; the checkpoint equals `compress(model)`'s saved
    output tensor for tensor. `out_dir` is written atomically, as by `save_compressed`.

    Args:
        model: a local checkpoint folder, an offline asset name or a Hub id (downloaded, weights only).
        method, calibration, calibration_ids, stock_if_uniform, base_model, **method_kwargs: as `compress`.
        out_dir: the output folder (must be new or empty, or a previous checkpoint with `overwrite`).
        tokenizer: default: the checkpoint's own.
        dtype: the dtype the layers are computed in; `save_dtype`: the output's (default: `dtype`).
        card_writer: e.g. `flatten_hf.write_card`, run on the staged folder (see `save_compressed`).
        resident_layers: decoder layers kept cached between uses.

    Returns:
        The output folder.
    """
    folder = Path(local_checkpoint(model))
    settings = calibration or CalibrationConfig()  # `calibration` itself stays None when not given (see the plan)
    if calibration_ids is None and SELF_SOURCE in settings.source.split("+"):
        raise ValueError(f"--calib-source {settings.source!r} samples text from the whole model, which a streamed "
                         "run never holds; use --in-memory, or a text source.")
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    save_dtype = getattr(torch, save_dtype) if isinstance(save_dtype, str) else (save_dtype or dtype)
    check_output_dir(out_dir, overwrite, inputs=(folder,))
    method_config(method, **method_kwargs)  # bad options fail before the weights are touched
    source = load_streamed_model(folder, dtype, settings.device or "cpu", resident_layers)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    with staged_output(out_dir, overwrite, inputs=(folder,)) as staging:
        source.model.layers.spill_to(staging / ".scratch", save_dtype)
        _, plan, layer_states, recorded = _plan_and_layers(source, method, tokenizer, calibration, calibration_ids,
                                                           base_model or str(model), method_kwargs)
        config = compressed_config(source.config, plan, stock_if_uniform, recorded)
        write_checkpoint(staging, source, config, layer_states, save_dtype, max_shard_size)
        shutil.rmtree(staging / ".scratch", ignore_errors=True)
        finish_checkpoint(staging, config, tokenizer, card_writer, Path(out_dir).expanduser().resolve().name)
    logger.info("peak resident memory %.2f GB, %d layer reads", peak_rss_bytes() / 1e9, source.model.layers.reads)
    return Path(out_dir).expanduser().resolve()
