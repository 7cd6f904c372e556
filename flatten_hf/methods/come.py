"""CoMe (Wang et al., 2510.15304): merge adjacent layers by concatenating their most sensitive channels.

Progressive, one layer removed per step, always measured on the *current* model:

1. Measure every current layer on the calibration data: its Block Influence, the last-token hidden
   state entering it, and the channel sensitivity (`ops/sensitivity.py`) of its MLP channels and of
   its key/value groups.
2. Pick the adjacent pair of not-yet-merged layers whose input and output are closest: the angular
   distance of the last-token hidden states across the pair (CoMe's default, after Gromov et al.), or
   the pair's Block Influence over all tokens (`pair_score="bi"`).
3. Split the original width between the two by their Block Influence (`ops/share_allocation.py`)
   and keep each member's most sensitive key/value groups (each with exactly its own query heads)
   and MLP channels.
4. Concatenate them into one layer of the original width. Norms are either **averaged** (CoMe) or
   **folded** into the projections first (FlattenGPT's exact fold, our improvement: each member then
   sees exactly the normalised input it was trained on).

Each original layer is merged at most once (CoMe's `--wo-repeat`), so at most half of the layers
can be removed. A merge changes only the layers from the merge point on, so the measurements of the
layers before it are reused and the hidden states entering every current layer are kept: memory is
(layers + 1) x the calibration activations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..adapters import adapter_for, head_dim_of, layer_sizes, loaded_decoder_layer
from ..assemble import layer_from_sources, layer_state, whole_layer
from ..calibration import LayerwiseRunner, layer_type_of
from ..ops.channel_selection import top_k
from ..ops.head_selection import query_heads
from ..ops.layer_weights import LayerState, concat_averaged_norms, select
from ..ops.sensitivity import channel_sensitivity, kv_group_sensitivity
from ..ops.share_allocation import cap_counts, distribute_and_round, influence_shares
from ..plan import MergePlan, SourceSlice
from ..similarity import block_influence, last_token_angular_distance
from ..streaming import new_layer_states
from .common import layers_to_remove
from .registry import MethodSpec, check_options, option, register_method

logger = logging.getLogger(__name__)

NORM_MODES = ("fold", "average")
PAIR_SCORES = ("angular", "bi")


@dataclass
class CoMeConfig:
    """Options of CoMe.

    Args:
        num_layers: decoder layers to remove (one merge of two adjacent layers removes one).
        ratio: or the fraction of decoder layers to remove (at most half: each layer merges once).
        norms: 'fold' (fold each member's RMSNorm weights into its projections before concatenating:
            exact) or 'average' (CoMe: the merged layer's norm weights are the members' mean).
        pair_score: how the pair to merge is chosen: 'angular' (angular distance of the last-token
            hidden states across the pair, CoMe's default) or 'bi' (the pair's Block Influence, all tokens).
    """

    num_layers: int | None = None
    ratio: float | None = None
    norms: str = option(
        "fold", "fold each merged layer's RMSNorm weights into its projections before concatenating (fold, default: "
        "exact) or average the members' norm weights (average, as in CoMe)", choices=NORM_MODES)
    pair_score: str = option(
        "angular", "choose the adjacent pair to merge by the angular distance of last-token hidden states across it "
        "(angular, default, as in CoMe) or by its Block Influence over all tokens (bi)", choices=PAIR_SCORES)

    __post_init__ = check_options  # choices and numeric rules of the option(...) fields, named on failure


@dataclass
class _Layer:
    """One layer of the current model: where it came from and, for a merged layer, its weights and
    runnable module. An untouched original layer is fetched from the model whenever it runs, so a
    streamed model reads it again from disk instead of keeping every layer resident."""

    sources: list[SourceSlice]
    state: LayerState | None = None
    merged: nn.Module | None = None

    @property
    def group(self) -> list[int]:
        return [s.layer for s in self.sources]

    def module(self, model: PreTrainedModel) -> nn.Module:
        return model.model.layers[self.group[0]] if self.merged is None else self.merged


@dataclass
class _Stats:
    """What one step needs to know of one current layer, measured on its true input."""

    block_influence: float
    kv_sensitivity: torch.Tensor
    channel_sensitivity: torch.Tensor


@torch.no_grad()
def measure_layer(layer: nn.Module, layer_type: str, runner: LayerwiseRunner, inputs: list[torch.Tensor],
                  n_rep: int, head_dim: int) -> tuple[_Stats, list[torch.Tensor]]:
    """Run `layer` on `inputs`, recording E|.| of the inputs of the attention and MLP output projections
    (o_proj, down_proj) on the way; return its statistics and its outputs."""
    roles = adapter_for(runner.config).roles
    o_proj, down_proj = roles.module(layer, "attention_output"), roles.module(layer, "mlp_output")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {"o": 0, "down": 0}

    def recorder(key: str):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            sums[key] = sums.get(key, 0) + x.abs().sum(0, dtype=torch.float64)
            counts[key] += x.shape[0]
        return hook

    handles = [o_proj.register_forward_pre_hook(recorder("o")), down_proj.register_forward_pre_hook(recorder("down"))]
    try:
        outputs = runner.run(layer, layer_type, inputs=inputs)
    finally:
        for handle in handles:
            handle.remove()
    stats = _Stats(
        block_influence=block_influence(inputs, outputs),
        kv_sensitivity=kv_group_sensitivity(sums["o"] / counts["o"], o_proj.weight, n_rep, head_dim),
        channel_sensitivity=channel_sensitivity(sums["down"] / counts["down"], down_proj.weight),
    )
    return stats, outputs


def select_pair_sources(layers: list[int], stats: list[_Stats], num_kv_heads: int, intermediate_size: int,
                        n_rep: int) -> tuple[list[SourceSlice], list[float]]:
    """Each member's share of the width (by Block Influence) and its most sensitive key/value groups
    (with exactly their own query heads) and MLP channels, as plan entries; plus the shares. A share
    never exceeds what its member has (see `cap_counts`)."""
    shares = influence_shares([s.block_influence for s in stats])
    kv_counts = cap_counts(distribute_and_round(shares, num_kv_heads), [len(s.kv_sensitivity) for s in stats])
    channel_counts = cap_counts(distribute_and_round(shares, intermediate_size),
                                [len(s.channel_sensitivity) for s in stats])
    sources = []
    for layer, s, n_kv, n_ch in zip(layers, stats, kv_counts, channel_counts):
        kv = top_k(s.kv_sensitivity, n_kv).tolist()
        sources.append(SourceSlice(layer, query_heads(kv, n_rep), kv, top_k(s.channel_sensitivity, n_ch).tolist()))
    return sources, shares


def merged_state(model: PreTrainedModel, sources: list[SourceSlice], shares: list[float], norms: str) -> LayerState:
    """The merged layer's weights: folded norms (exact concatenation) or CoMe's averaged norms."""
    if norms == "fold":
        return layer_from_sources(model, sources)
    head_dim, roles = head_dim_of(model.config), adapter_for(model.config).roles
    parts = [select(layer_state(model, s.layer), roles, s.q_heads, s.kv_heads, s.mlp_channels, head_dim)
             for s in sources]
    return concat_averaged_norms(parts, roles, shares)


def pair_distance(inputs: list[list[torch.Tensor]], k: int, pair_score: str) -> float:
    """How much current layers k and k+1 together change their input (lower: better to merge)."""
    if pair_score == "angular":
        return last_token_angular_distance(inputs[k], inputs[k + 2])
    return block_influence(inputs[k], inputs[k + 2])


def come(model: PreTrainedModel, runner: LayerwiseRunner, config: CoMeConfig) -> tuple[MergePlan, Sequence[LayerState]]:
    """Plan and weights of the model after progressive concatenation merges."""
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    n_merges = layers_to_remove(n_layers, config.num_layers, config.ratio)
    if n_merges > n_layers // 2:
        raise ValueError(f"CoMe merges each original layer at most once, so it removes at most {n_layers // 2} of "
                         f"{n_layers} layers; {n_merges} were asked. Use a smaller ratio, or FlattenGPT.")
    head_dim, n_rep = head_dim_of(cfg), cfg.num_attention_heads // cfg.num_key_value_heads
    current = [_Layer([whole_layer(cfg, i)]) for i in range(n_layers)]
    stats: list[_Stats] = []
    inputs: list[list[torch.Tensor]] = [runner.hidden]  # inputs[k]: the hidden states entering current layer k
    merges = []
    for _ in tqdm(range(n_merges), desc="come: merge layers", unit="merge"):
        # Layers from the last merge point on changed or see new inputs: (re)measure them.
        for k in range(len(stats), len(current)):
            layer = current[k]
            layer_stats, outputs = measure_layer(layer.module(model), layer_type_of(cfg, layer.group[0]), runner,
                                                 inputs[k], n_rep, head_dim)
            stats.append(layer_stats)
            inputs.append(outputs)
        candidates = {k: pair_distance(inputs, k, config.pair_score) for k in range(len(current) - 1)
                      if len(current[k].group) == 1 and len(current[k + 1].group) == 1}
        k = min(candidates, key=candidates.get)
        pair = current[k].group + current[k + 1].group
        # The merged layer is as wide as its members on average: the dense width for a uniform model.
        sizes = [layer_sizes(cfg, i) for i in pair]
        kv_heads, channels = (round(sum(size[j] for size in sizes) / 2) for j in (1, 2))
        sources, shares = select_pair_sources(pair, [stats[k], stats[k + 1]], kv_heads, channels, n_rep)
        state = merged_state(model, sources, shares, config.norms)
        module = loaded_decoder_layer(cfg, pair[0], state, kv_heads * n_rep, kv_heads, channels, runner.device,
                                      model.dtype)
        current[k:k + 2] = [_Layer(sources, state, module)]
        del stats[k:], inputs[k + 1:]
        merges.append({"layers": pair, "distance": round(candidates[k], 6), "shares": [round(r, 4) for r in shares],
                       "kv_heads": [len(s.kv_heads) for s in sources],
                       "mlp_channels": [len(s.mlp_channels) for s in sources]})
        logger.info("CoMe merges layers %s (distance %.4f, shares %s)", pair, candidates[k], merges[-1]["shares"])
    plan = MergePlan(method="come", source_num_hidden_layers=n_layers, layers=[layer.sources for layer in current],
                     method_params={"merges": merges})
    states = new_layer_states(model)
    for layer in current:
        states.append(layer.state if layer.state is not None else layer_state(model, layer.group[0]))
    return plan, states


register_method(MethodSpec(
    name="come", config_class=CoMeConfig, run=come,
    title="CoMe", paper="[arXiv:2510.15304](https://arxiv.org/abs/2510.15304)",
    summary="Adjacent layers were merged progressively, one pair per step on the current model (the pair whose last-token "
            "hidden states change least across it): each member kept its most sensitive key/value groups (with exactly "
            "their own query heads) and MLP channels (mean |activation| times the L1 norm of the output-projection "
            "column), in proportion to its Block Influence, concatenated into one layer of the original width.",
    citation="@inproceedings{wang2025come,\n  title     = {Layer as Puzzle Pieces: Compressing Large Language Models "
             "through Layer Concatenation},\n  author    = {Wang, Fei and Shen, Li and Ding, Liang and Xue, Chao and Liu, "
             "Ye and Ding, Changxing},\n  booktitle = {Advances in Neural Information Processing Systems},\n"
             "  year      = {2025}\n}",
))
