"""ShortGPT (Men et al., 2403.03853): remove the blocks with the lowest Block Influence."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..assemble import plan_weights, whole_layer
from ..calibration import LayerwiseRunner, layer_type_of
from ..ops.layer_weights import LayerState
from ..plan import MergePlan
from ..similarity import block_influence, lowest_influence
from .common import layers_to_remove
from .registry import MethodSpec, check_options, register_method

logger = logging.getLogger(__name__)


@dataclass
class ShortGPTConfig:
    """Remove `num_layers` decoder layers, or `ratio` of them (e.g. 0.2 of 30 layers = 6)."""

    num_layers: int | None = None
    ratio: float | None = None

    __post_init__ = check_options  # the depth fields' rules, named on failure


@torch.no_grad()
def block_influences(model: PreTrainedModel, runner: LayerwiseRunner) -> list[float]:
    """BI of every decoder layer on the calibration data, each measured on its true input."""
    scores = []
    for i, layer in enumerate(tqdm(model.model.layers, desc="shortgpt: block influence", unit="layer")):
        outputs = runner.run(layer, layer_type_of(model.config, i))
        scores.append(block_influence(runner.hidden, outputs))
        runner.advance(outputs)
    return scores


def shortgpt(model: PreTrainedModel, runner: LayerwiseRunner,
             config: ShortGPTConfig) -> tuple[MergePlan, Sequence[LayerState]]:
    """Plan and weights of the model without its `n` lowest-BI layers."""
    n_layers = model.config.num_hidden_layers
    n_remove = layers_to_remove(n_layers, config.num_layers, config.ratio)
    scores = block_influences(model, runner)
    removed = lowest_influence(scores, n_remove)
    logger.info("ShortGPT removes layers %s (BI %s)", removed, [round(scores[i], 4) for i in removed])
    plan = MergePlan(
        method="shortgpt", source_num_hidden_layers=n_layers,
        layers=[[whole_layer(model.config, i)] for i in range(n_layers) if i not in removed],
        method_params={"num_layers_removed": n_remove, "removed_layers": removed,
                       "block_influence": [round(s, 6) for s in scores]},
    )
    return plan, plan_weights(model, plan)


register_method(MethodSpec(
    name="shortgpt", config_class=ShortGPTConfig, run=shortgpt,
    title="ShortGPT", paper="[arXiv:2403.03853](https://arxiv.org/abs/2403.03853)",
    summary="The layers with the lowest Block Influence (one minus the cosine similarity of a layer's input and output "
            "hidden states on calibration text) were removed; the remaining layers are unchanged.",
    citation="@article{men2024shortgpt,\n  title   = {ShortGPT: Layers in Large Language Models are More Redundant Than "
             "You Expect},\n  author  = {Men, Xin and Xu, Mingyu and Zhang, Qingyu and Wang, Bingning and Lin, Hongyu and "
             "Lu, Yaojie and Han, Xianpei and Chen, Weipeng},\n  journal = {arXiv preprint arXiv:2403.03853},\n"
             "  year    = {2024}\n}",
))
