"""ReplaceMe (Shopkhoev et al., 2505.02819): replace a block of layers by a linear map, folded into the
down projection before the cut. Training-free, and the result is a stock architecture.

1. **Which block**: on the dense model, the angular distance between the last-token hidden states
   before and after every contiguous span of n layers (Gromov et al.); the span with the smallest
   distance is removed. With `num_blocks` > 1 the n layers are split into that many spans, chosen
   greedily (largest first, non-overlapping) and merged where they touch, as ReplaceMe's
   `select_non_overlapping_blocks` does. Layer 0 is never removed: the map needs an MLP before the cut.
2. **The map** (`ops/linear_replacement.py`): from the MLP output M and the pre-MLP residual r of the
   layer before the cut and the hidden state Y after the block, by least squares (`lstsq`) or by the
   cosine objective (`cosine`).
3. **The fold**: the map goes into that layer's down_proj; the removed layers are gone. In the plan
   they are empty sources (no head, no channel) of the layer that absorbed them, so the plan's groups
   say which original layers each new layer stands for (`[[0], ..., [i, i+1, ..., j], ...]`): the
   card shows it, and recovery distils that layer toward the teacher's state after the block.

Where we depart from the public code, and why: the maps are estimated on the layer-wise runner, so
with several blocks each map is fitted on the already-compressed prefix (the code fits all of them
on the dense model's activations, so the second map never sees the first one's error), and the
target is the removed block run on that same input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..adapters import adapter_for, layer_sizes, loaded_decoder_layer
from ..assemble import layer_state, whole_layer
from ..calibration import LayerwiseRunner, capture, layer_type_of
from ..ops.compensation import relative_error
from ..ops.layer_weights import LayerState
from ..ops.linear_replacement import cosine_map, fold_into_down_proj, lstsq_map
from ..plan import MergePlan, SourceSlice
from ..similarity import last_token_angular_distance
from ..streaming import new_layer_states
from .common import layers_to_remove
from .registry import MethodSpec, check_options, option, register_method

logger = logging.getLogger(__name__)

ESTIMATORS = ("lstsq", "cosine")


@dataclass
class ReplaceMeConfig:
    """Options of ReplaceMe.

    Args:
        num_layers: decoder layers to remove.
        ratio: or the fraction of decoder layers to remove.
        estimator: 'lstsq' (closed-form least squares) or 'cosine' (cosine distance, Adam).
        num_blocks: number of contiguous blocks the removed layers are split into (merged where adjacent).
        lstsq_ridge: ridge of the lstsq estimator toward T = I, as a multiple of the mean eigenvalue of
            M^T M (ReplaceMe's default: 0).
        epochs: passes of Adam over the calibration tokens for the cosine estimator (ReplaceMe: 10).
        learning_rate: Adam's learning rate for the cosine estimator (ReplaceMe: 1e-4).
    """

    num_layers: int | None = None
    ratio: float | None = None
    estimator: str = option("lstsq", "how the linear map is estimated: least squares (lstsq, default, closed form) "
                                     "or the cosine distance to the block's output, by Adam (cosine)",
                            choices=ESTIMATORS)
    num_blocks: int = option(1, "split the removed layers into this many contiguous blocks, each replaced by its "
                                "own linear map (default 1)", check="positive")
    lstsq_ridge: float = option(0.0, "ridge of the least-squares map toward the identity, times the mean eigenvalue "
                                     "of the MLP-output Gram (default 0, as ReplaceMe)", check="non_negative")
    epochs: int = option(10, "cosine estimator: Adam passes over the calibration tokens (default 10)", check="positive")
    learning_rate: float = option(1e-4, "cosine estimator: Adam learning rate (default 1e-4)", check="positive")

    __post_init__ = check_options  # choices and numeric rules of the option(...) fields, named on failure


def block_sizes(num_removed: int, num_blocks: int) -> list[int]:
    """`num_removed` layers split into at most `num_blocks` near-equal spans, largest first."""
    k = min(num_blocks, num_removed)
    return [num_removed // k + (i < num_removed % k) for i in range(k)] if k else []


def choose_blocks(distance, num_layers: int, sizes: list[int]) -> list[tuple[int, int]]:
    """Greedy non-overlapping spans `[start, end)` of the given sizes with the smallest `distance(start, end)`,
    never starting at layer 0; spans that touch are merged."""
    chosen: list[tuple[int, int]] = []
    for size in sizes:
        free = [s for s in range(1, num_layers - size + 1)
                if all(s + size <= a or s >= b for a, b in chosen)]
        if not free:
            raise ValueError(f"Cannot place {len(sizes)} separate blocks of {sizes} layers in {num_layers} layers; "
                             "use fewer --num-blocks.")
        start = min(free, key=lambda s: distance(s, s + size))
        chosen.append((start, start + size))
    merged: list[tuple[int, int]] = []
    for a, b in sorted(chosen):
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


@torch.no_grad()
def _last_token_states(model: PreTrainedModel, runner: LayerwiseRunner) -> list[list[torch.Tensor]]:
    """Per layer boundary 0..L (entering layer i; L: after the last layer), the last-token hidden states."""
    states, hidden = [], runner.hidden
    for i, layer in enumerate(tqdm(model.model.layers, desc="replaceme: block distances", unit="layer")):
        states.append([h[:, -1:] for h in hidden])
        hidden = runner.run(layer, layer_type_of(model.config, i), inputs=hidden)
    states.append([h[:, -1:] for h in hidden])
    return states


@torch.no_grad()
def fit_block(model: PreTrainedModel, runner: LayerwiseRunner, cut: int, end: int, config: ReplaceMeConfig
              ) -> tuple[LayerState, list[torch.Tensor], dict]:
    """Layer `cut` with the map for the removed layers cut+1..end-1 folded in, its outputs, and a report.

    `runner` holds the inputs of layer `cut`. FlattenGPT uses this too, as one candidate for a group.
    """
    cfg = model.config
    layer = model.model.layers[cut]
    roles = adapter_for(cfg).roles
    with capture(roles.module(layer, "mlp"), "output") as mlp_outputs:
        outputs = runner.run(layer, layer_type_of(cfg, cut))
    targets = outputs
    for j in range(cut + 1, end):
        targets = runner.run(model.model.layers[j], layer_type_of(cfg, j), inputs=targets)
    flat = lambda xs: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])  # noqa: E731
    m, h, y = flat(mlp_outputs), flat(outputs), flat(targets)
    r = h - m
    if config.estimator == "lstsq":
        m64 = m.double()
        transform = lstsq_map(m64.T @ m64, m64.T @ (y - r).double(), config.lstsq_ridge)
    else:
        transform = cosine_map(m, r, y, config.epochs, lr=config.learning_rate)
    state = layer_state(model, cut)
    weight_name, bias_name = roles.weight_name("mlp_output"), roles.weight_name("mlp_output", "bias")
    weight, bias = fold_into_down_proj(state[weight_name], state.get(bias_name), transform)
    state[weight_name] = weight
    if bias is not None:
        state[bias_name] = bias
    new_layer = loaded_decoder_layer(cfg, cut, state, *layer_sizes(cfg, cut), runner.device, model.dtype)
    new_outputs = runner.run(new_layer, layer_type_of(cfg, cut))
    # squared errors relative to the target's energy: of plain removal (T = I) and of the fitted map
    energy = (y.double() ** 2).sum().item()
    removal = relative_error(((y - h).double() ** 2).sum().item(), energy)
    fit = relative_error(sum(((o - t).double() ** 2).sum().item() for o, t in zip(new_outputs, targets)), energy)
    report = {"removed": [cut + 1, end], "folded_into": cut, "removal_rel_error": round(removal, 8),
              "fit_rel_error": round(fit, 8)}
    return state, new_outputs, report


def absorbing_layer(config, cut: int, end: int) -> list[SourceSlice]:
    """The plan entry of layer `cut` holding the map of layers cut+1..end-1: those as empty sources."""
    return [whole_layer(config, cut), *(SourceSlice(j, [], [], []) for j in range(cut + 1, end))]


def replaceme(model: PreTrainedModel, runner: LayerwiseRunner,
              config: ReplaceMeConfig) -> tuple[MergePlan, Sequence[LayerState]]:
    """Plan and weights of the model with its closest block(s) replaced by folded linear maps."""
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    n_remove = layers_to_remove(n_layers, config.num_layers, config.ratio)
    blocks: list[tuple[int, int]] = []
    distances: dict[str, float] = {}
    if n_remove:
        states = _last_token_states(model, runner.with_hidden(runner.hidden))

        def distance(start: int, end: int) -> float:
            key = f"{start}-{end}"
            if key not in distances:
                distances[key] = round(last_token_angular_distance(states[start], states[end]), 6)
            return distances[key]

        blocks = choose_blocks(distance, n_layers, block_sizes(n_remove, config.num_blocks))
    logger.info("ReplaceMe removes blocks %s", [list(b) for b in blocks])
    cuts = {start - 1: end for start, end in blocks}
    layers, layer_states, reports = [], new_layer_states(model), []
    i = 0
    with tqdm(total=n_layers, desc="replaceme: fit and fold", unit="layer") as bar:
        while i < n_layers:
            if i in cuts:
                state, outputs, report = fit_block(model, runner, i, cuts[i], config)
                reports.append(report)
                step = cuts[i] - i
            else:
                outputs, state, step = runner.run(model.model.layers[i], layer_type_of(cfg, i)), layer_state(model, i), 1
            layers.append(absorbing_layer(cfg, i, i + step))
            layer_states.append(state)
            runner.advance(outputs)
            i += step
            bar.update(step)
    plan = MergePlan(method="replaceme", source_num_hidden_layers=n_layers, layers=layers,
                     method_params={"num_layers_removed": n_remove, "removed_blocks": [list(b) for b in blocks],
                                    "folded_into": sorted(cuts), "fits": reports, "block_distances": distances})
    return plan, layer_states


def _label(params: dict) -> str:
    return f"replaceme ({params.get('estimator', 'lstsq')})"


register_method(MethodSpec(
    name="replaceme", config_class=ReplaceMeConfig, run=replaceme, label=_label,
    title="ReplaceMe", paper="[arXiv:2505.02819](https://arxiv.org/abs/2505.02819)",
    summary="The contiguous block of layers whose input and output last-token hidden states are closest (angular "
            "distance) was removed and replaced by one linear map estimated on calibration activations, folded into "
            "the down projection of the MLP before the cut: a stock architecture with no added parameters.",
    citation="@inproceedings{shopkhoev2025replaceme,\n  title     = {ReplaceMe: Network Simplification via Depth "
             "Pruning and Transformer Block Linearization},\n  author    = {Shopkhoev, Dmitriy and Ali, Ammar and "
             "Zhussip, Magauiya and Malykh, Valentin and Lefkimmiatis, Stamatios and Komodakis, Nikos and Zagoruyko, "
             "Sergey},\n  booktitle = {Advances in Neural Information Processing Systems},\n  year      = {2025}\n}",
))
