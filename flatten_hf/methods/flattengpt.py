"""FlattenGPT (Xu et al., 2602.08858): flatten adjacent layers into one wide layer, then prune it back.

Pipeline, on calibration data pushed through the model one layer at a time:

1. **Grouping** (`grouping.py`): the similarity of the hidden states entering every layer (and of the
   final one), then greedy merges of the best-scoring adjacent groups until the target depth is reached.
2. **Flattening** (`ops/folding.py`, `ops/layer_weights.py`): fold each member's RMSNorm weights into
   its projections and concatenate the members' heads and MLP channels into one wide layer.
3. **Attention pruning** (`ops/head_selection.py`): keep whole key/value groups, chosen by the error
   they leave on the group's attention target, optionally refitting o_proj by least squares.
4. **MLP pruning** (`ops/channel_selection.py`, `ops/compensation.py`): ridge leverage scores of the
   wide MLP's activations, measured after the *pruned* attention (what the block really sees), then
   a closed-form refit of down_proj.

Where we depart from the paper, and why (measured on SmolLM2-135M, see the README):

- The compensation targets the group's **true sequential output** (its original layers run one
  after the other on the block's input), not the wide block's own output: the wide block is itself
  an approximation, and fitting to it bakes its error in. The attention target is the sum of the
  members' attention outputs in that sequential run; the MLP target is what remains.
- Every group is finally compared, on the calibration tokens, with its plain alternatives "keep one
  member whole" (i.e. remove the others, as ShortGPT would); the lowest-error block wins. So for a
  given group FlattenGPT never does worse on the calibration data than dropping one of its layers.
- Statistics come from the layer-wise runner on the already-compressed prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..adapters import loaded_decoder_layer
from ..assemble import layer_state, whole_layer
from ..calibration import LayerwiseRunner, layer_type_of
from ..grouping import (
    GROUP_SCORES,
    SIMILARITY_METRICS,
    SimilarityAccumulator,
    given_groups,
    greedy_groups,
    merge_best_adjacent,
    merge_score,
    parse_groups,
)
from ..ops.layer_weights import LayerState
from ..ops.width_allocation import allocate_widths
from ..plan import MergePlan
from ..similarity import block_influence, lowest_influence
from ..skip_loss import SkipLoss
from ..streaming import drop_layer_states, new_layer_states
from .common import layers_to_remove
from .flatten_block import GroupFlattener, block_widths, compress_group
from .registry import MethodSpec, check_options, option, register_method

logger = logging.getLogger(__name__)

SIMILARITY_MODES = ("one-shot", "iterative")
WIDTH_POLICIES = ("uniform", "global", "split")
TARGETS = ("sequential", "dense")
GRAM_DTYPES = ("float64", "float32")
TOKEN_WEIGHTINGS = ("uniform", "norm")
REMOVAL_SCORES = ("influence", "loss")


@dataclass
class FlattenGPTConfig:
    """Options of FlattenGPT.

    Args:
        num_layers: decoder layers to remove (each merge of two adjacent groups removes one).
        ratio: or the fraction of decoder layers to remove.
        similarity: 'one-shot' (layer similarities of the dense model, the paper's greedy rule) or
            'iterative' (recomputed after every merge on the partly flattened model).
        similarity_metric: 'l2' (default: one minus the relative squared distance, which also sees the
            residual stream grow) or 'cosine' (the paper's mean per-token cosine); see `flatten_hf.grouping`.
            l2 was chosen on the validation half of the zero-shot tasks (SmolLM2-135M, ratio 0.2: 46.67
            against cosine's 44.00, first 300 documents per task; docs/generalization.md), not on the numbers reported.
        group_score: how a candidate group is rated: 'output' (default: its input and its output alike, i.e.
            the block changes the residual stream little, as ShortGPT and ReplaceMe choose what to cut) or
            'input' (the paper's: its first and last members' inputs alike); see `flatten_hf.grouping`.
            output was chosen on the shuffled validation samples of the zero-shot tasks at ratio 0.2:
            +2.10 (± 1.18) points over input on Qwen2.5-Coder-0.5B, +0.20 (± 0.83) on SmolLM2-135M, with
            lower perplexity on both of Qwen2's domains (docs/generalization.md, "Where the groups go").
        width_policy: 'uniform' (every flattened block pruned back to the dense widths: a stock
            architecture) or 'global' (kept heads and channels chosen by one ranking across all
            flattened blocks, at the same total parameter count: per-layer widths) or 'split' (every block keeps one
            dense layer's parameters but tries each split of them between key/value groups and MLP channels from
            half to twice the dense head count, and keeps the split whose refit block is closest to its target:
            a seven-layer block may need more attention than one layer has; per-layer widths). On SmolLM2's
            shuffled validation samples split moved accuracy by +0.27 (± 0.73) points at ratio 0.3 and -1.20
            (± 0.69) at 0.2 against uniform (docs/generalization.md, "Three levers at ratio 0.3"), so it is not
            the default.
        width_multiple: with the global policy, MLP channels are kept in runs of this many, so every
            width is a multiple of it (llama.cpp's quantization blocks are 32 and 256 values along a down
            projection's rows; a width that is no multiple is stored in a fallback type).
        prune: False keeps the wide blocks whole ("depth-only" flattening: fewer, wider layers at the
            full parameter count).
        attn_compensation: least-squares refit of o_proj on the kept heads.
        target: what a pruned block is fitted to: 'sequential' (the group's original layers run one after
            the other on the block's input) or 'dense' (the dense model's hidden state after the group,
            which also undoes the drift of earlier groups; costs one more dense pass).
        token_weighting: how each calibration token's error counts in the refits and in judging a block:
            'uniform' (plain least squares) or 'norm' (relative to that token's hidden-state RMS, which is
            what the next layer's RMSNorm divides it by; see `flatten_block.token_scale`: the attention
            sink's massive hidden state otherwise holds nearly all of a block's error budget).
        ridge_factor: lambda of the ridge leverage scores and of the refits, as a multiple of the
            mean eigenvalue of the Gram matrix being inverted.
        max_group_size: largest number of original layers in one flattened block (None: no limit).
        map_candidate: one more candidate per group: its first layer with a least-squares linear map
            standing in for the others, folded into its down projection (ReplaceMe's replacement).
        holdout_fraction: the last batches held out of each block's refit; the candidates (the refit
            block, "keep one member whole") are compared on them instead of on the fitted tokens.
        gram_dtype: what the activation Gram matrices are summed and factored in: 'float64' (default) or
            'float32', which halves the largest allocation of a group, the wide MLP's channels x channels
            Gram (2 x 14336 channels for Llama-3-8B: 6.6 GB in float64); on the tiny-model tests it keeps
            the same heads and channels as float64, with weights within 1e-3.
        fixed_groups: the groups given by hand, as layer ranges ('3-4,12-18,25-27'; the layers it leaves out stay
            whole), instead of the similarity grouping: to flatten where another method's plan removes
            layers, or to rebuild a plan's groups. Their sizes minus one must add up to the layers removed by
            flattening (all of them, unless `remove_fraction`);
            `similarity` and `max_group_size` then have no effect.
        remove_fraction: the share of the layers to remove that is removed whole instead of flattened: FlattenGPT
            makes only the first (1 - remove_fraction) of the merges, then drops the blocks of the flattened model
            with the lowest Block Influence on the same calibration tokens (ShortGPT's rule, each block measured on
            its true input). Why: flattening's cost grows fastest at its last, largest merges, while removing the
            most redundant single layers costs little (SmolLM2-135M at ratio 0.3: docs/generalization.md,
            "Flatten the first merges, remove the rest"). The same model as `compress(..., 'flattengpt')` followed by
            `compress(..., 'shortgpt')` on its output, in one pass (with the default `removal_score`).
        removal_score: how the blocks removed by `remove_fraction` are chosen: 'influence' (lowest Block
            Influence, ShortGPT's rule) or 'loss' (the smallest increase of the next-token loss when the block
            alone is skipped, on the first `similarity_tokens` calibration tokens, or on the batches held out of
            the refits with `holdout_fraction`; `flatten_hf.skip_loss`).
            Block Influence sees how far a block turns the residual stream, not what it is worth to the
            prediction: on SmolLM2-135M at 6 merges + 3 removals the two pick different blocks (original layers
            3, 25, 26 against 5, 7, 26), and the loss's choice has the lower perplexity in and out of the
            calibration domain (docs/generalization.md, "Flatten the first merges, remove the rest").
        similarity_tokens: calibration tokens used for similarities and the global ranking. 8192 by
            default: on SmolLM2 the groups at ratios 0.1/0.2/0.3 are identical from 4096, 8192 and
            16384 tokens, and each halving saves a quarter of a dense forward pass of compute.
    """

    num_layers: int | None = None
    ratio: float | None = None
    similarity: str = option(
        "one-shot", "layer similarities of the dense model (one-shot, default) or re-measured after every merge on "
        "the partly flattened model (iterative)", choices=SIMILARITY_MODES)
    similarity_metric: str = option(
        "l2", "how alike two layers' inputs are: one minus their relative squared distance (l2, default), which also "
              "sees the residual stream's growth, or the paper's mean per-token cosine (cosine)",
        choices=SIMILARITY_METRICS)
    group_score: str = option(
        "output", "rate a candidate group by how alike its own input and output are (output, default: a block that "
                  "changes little, as ShortGPT and ReplaceMe cut) or its first and last members' inputs (input: the "
                  "paper's rule)", choices=GROUP_SCORES)
    width_policy: str = option(
        "uniform", "prune every flattened block back to the dense widths (uniform, default: a stock architecture), "
        "or choose heads and channels by one ranking across blocks at the same parameter count (global: per-layer "
        "widths), or keep one layer's parameters per block but split them between attention and MLP as the block's "
        "refit error says best (split: per-layer widths)", choices=WIDTH_POLICIES)
    width_multiple: int = option(
        1, "with --width-policy global, keep MLP channels in runs of N so that every width is a multiple of N "
           "(llama.cpp quantizes a down projection fully only then: 32 for q8_0/q4_0, 256 for its k-quants)",
        type=int, check="positive")
    prune: bool = option(True, "depth-only flattening: keep the wide blocks whole (fewer layers, same parameters)")
    attn_compensation: bool = option(
        True, "keep the original o_proj rows of the kept heads instead of a least-squares refit")
    target: str = option(
        "sequential", "fit each pruned block to its original layers' sequential output (default) or to the dense "
        "model's hidden state, which also undoes earlier blocks' drift (one more pass)", choices=TARGETS)
    token_weighting: str = option(
        "uniform", "how a token's error counts in the refits and the choice of each block: as it is (uniform, default) "
                   "or relative to its hidden state's RMS (norm), as the next layer's RMSNorm sees it",
        choices=TOKEN_WEIGHTINGS)
    ridge_factor: float = option(
        0.1, "ridge lambda as a multiple of the mean eigenvalue of the activation Gram (default 0.1)",
        check="non_negative")
    max_group_size: int | None = option(
        None, "most original layers flattened into one block (default: no limit)", type=int, check="positive")
    fixed_groups: str | None = option(
        None, "flatten these runs of layers instead of choosing them by similarity (--similarity and "
              "--max-group-size then have no effect), e.g. '3-4,12-18': the layers left out stay whole, and the "
              "sizes minus one must add up to the layers removed by flattening", type=str)
    remove_fraction: float = option(
        0.0, "share of the layers to remove that is removed whole, by lowest Block Influence on the flattened model "
             "(ShortGPT's rule; see --removal-score), instead of flattened: e.g. 0.33 of 9 layers = 6 merges, then 3 "
             "blocks dropped (default 0: all flattened)", check="fraction")
    removal_score: str = option(
        "influence", "with --remove-fraction, remove the blocks of lowest Block Influence (influence, default: "
                     "ShortGPT's rule) or those whose skipping raises the next-token loss on the calibration text "
                     "least (loss: about n/2 more passes over --similarity-tokens tokens, n the number of blocks)",
        choices=REMOVAL_SCORES)
    similarity_tokens: int = option(
        8192, "calibration tokens used for the layer similarities and the global ranking (default 8192)",
        check="positive")
    gram_dtype: str = option(
        "float64", "dtype of the activation Gram matrices (float64, default; float32 halves the memory of a wide "
                   "MLP's Gram, 6.6 -> 3.3 GB for a Llama-3-8B group)", choices=GRAM_DTYPES)
    map_candidate: bool = option(
        False, "let each group also compete with keeping its first layer plus one least-squares linear map for the "
               "others, folded into that layer's down projection (ReplaceMe's replacement, per group)")
    holdout_fraction: float = option(
        0.0, "fraction of the calibration batches held out of each block's refit, on which the refit block and "
             "'keep one member whole' are compared (default 0: compared on the fitted tokens)", check="fraction")

    def __post_init__(self) -> None:
        check_options(self)  # choices and numeric rules of the option(...) fields, named on failure
        if self.fixed_groups is not None:
            parse_groups(self.fixed_groups)  # the syntax; the model's depth is checked by `check_groups`
        if self.removal_score != "influence" and not self.remove_fraction:
            raise ValueError(f"removal_score={self.removal_score!r} (--removal-score) chooses the blocks that "
                             "remove_fraction (--remove-fraction) removes whole; give that too, e.g. 0.33.")
        if self.width_multiple != 1 and self.width_policy != "global":
            raise ValueError("width_multiple (--width-multiple) rounds per-layer MLP widths; it needs "
                             "width_policy='global' (--width-policy global), the only policy that rounds them: "
                             "uniform keeps the dense widths and split tries whole-channel splits of one layer.")


def depth_split(n_layers: int, config: FlattenGPTConfig) -> tuple[int, int]:
    """(merges, whole blocks removed afterwards): the layers to remove, split by `remove_fraction`."""
    n_remove = layers_to_remove(n_layers, config.num_layers, config.ratio)
    n_dropped = round(config.remove_fraction * n_remove)
    return n_remove - n_dropped, n_dropped


def _block(model: PreTrainedModel, runner: LayerwiseRunner, group: list[int], config, cache: dict):
    """The dense layer of a one-layer group, else the group's wide (flattened, unpruned) block."""
    if len(group) == 1:
        return model.model.layers[group[0]]
    if tuple(group) not in cache:
        cache[tuple(group)] = GroupFlattener(model, runner, group, config).wide
    return cache[tuple(group)]


@torch.no_grad()
def layer_similarity(model: PreTrainedModel, runner: LayerwiseRunner, metric: str = "cosine") -> torch.Tensor:
    """S[i, j]: similarity of the hidden states entering layers i and j of the dense model (see `grouping`);
    index n is the final hidden state."""
    acc = SimilarityAccumulator(metric)
    hidden = runner.hidden
    for i, layer in enumerate(tqdm(model.model.layers, desc="flattengpt: layer similarity", unit="layer")):
        acc.add(hidden)
        hidden = runner.run(layer, layer_type_of(model.config, i), inputs=hidden)
    acc.add(hidden)
    return acc.matrix()


@torch.no_grad()
def iterative_groups(model: PreTrainedModel, runner: LayerwiseRunner, num_merges: int,
                     config: FlattenGPTConfig) -> tuple[list[list[int]], torch.Tensor]:
    """Merge one pair at a time, re-measuring on the model with the merged groups as wide blocks.

    Each current group is one block, so adjacent groups k, k+1 are scored by the similarity of block k's
    input and block k+1's input (``input``) or output (``output``) in the current model.
    """
    groups = [[i] for i in range(model.config.num_hidden_layers)]
    cache: dict = {}
    for _ in tqdm(range(num_merges), desc="flattengpt: iterative similarity", unit="merge"):
        acc, hidden = SimilarityAccumulator(config.similarity_metric), runner.hidden
        for group in groups:
            acc.add(hidden)
            hidden = runner.run(_block(model, runner, group, config, cache), layer_type_of(model.config, group[0]),
                                inputs=hidden)
        acc.add(hidden)
        similarity = acc.matrix()
        groups = merge_best_adjacent(groups, lambda k: merge_score(similarity, k, k + 1, config.group_score),
                                     config.max_group_size)
    return groups, similarity


@torch.no_grad()
def global_widths(model: PreTrainedModel, runner: LayerwiseRunner, groups: list[list[int]],
                  config: FlattenGPTConfig) -> dict[tuple[int, ...], tuple[int, int]]:
    """Per flattened block, the key/value groups and channels chosen by one ranking across blocks.

    The budget is what the uniform policy spends (one dense layer per block); the ranking is each
    unit's share of its block's update energy per parameter, on the dense model.
    """
    merged = [g for g in groups if len(g) > 1]
    kv_scores, channel_scores, flattener = [], [], None
    hidden = runner.hidden
    for group in tqdm(groups, desc="flattengpt: global ranking", unit="layer"):
        if len(group) == 1:
            hidden = runner.run(model.model.layers[group[0]], layer_type_of(model.config, group[0]), inputs=hidden)
            continue
        flattener = GroupFlattener(model, runner.with_hidden(hidden), group, config)
        kv, channels, hidden = flattener.unit_energies()
        kv_scores.append(kv)
        channel_scores.append(channels)
    cfg = model.config
    kv_params, channel_params = flattener.params(1, 0), flattener.params(0, 1)
    budget = len(merged) * flattener.params(cfg.num_key_value_heads, cfg.intermediate_size)
    widths = allocate_widths(kv_scores, channel_scores, kv_params, channel_params, budget,
                             channel_multiple=config.width_multiple)
    return {tuple(g): w for g, w in zip(merged, widths)}


def flattengpt(model: PreTrainedModel, runner: LayerwiseRunner,
               config: FlattenGPTConfig) -> tuple[MergePlan, Sequence[LayerState]]:
    """Plan and weights of the flattened (and, by default, pruned) model."""
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    n_merges, n_dropped = depth_split(n_layers, config)
    stats_runner = runner.head(config.similarity_tokens)
    similarity = None
    if config.fixed_groups is not None:
        groups = given_groups(config.fixed_groups, n_layers, n_merges)
    elif config.similarity == "one-shot":
        similarity = layer_similarity(model, stats_runner, config.similarity_metric)
        groups = greedy_groups(similarity, n_merges, config.max_group_size, config.group_score)
    else:
        groups, similarity = iterative_groups(model, stats_runner, n_merges, config)
    logger.info("FlattenGPT groups: %s", [g for g in groups if len(g) > 1])
    if not config.prune:
        widths = {}
    elif config.width_policy in ("uniform", "split"):  # split: `compress_group` tries other splits of this budget
        widths = {tuple(g): (cfg.num_key_value_heads, cfg.intermediate_size) for g in groups if len(g) > 1}
    else:
        widths = global_widths(model, stats_runner, groups, config)
    layers, states, reports, influences = [], new_layer_states(model), [], []
    dense = runner.with_hidden(runner.hidden) if config.target == "dense" else None
    skip = SkipLoss(runner, scored_batches(runner, config)) if n_dropped and config.removal_score == "loss" else None
    for group in tqdm(groups, desc="flattengpt: flatten and prune", unit="layer"):
        targets = None
        if dense is not None:  # the dense model in lockstep: its hidden state after this group
            for i in group:
                dense.advance(dense.run(model.model.layers[i], layer_type_of(cfg, i)))
            targets = dense.hidden
        layer_type = layer_type_of(cfg, group[0])
        if len(group) == 1:
            outputs = runner.run(model.model.layers[group[0]], layer_type)
            sources, state = [whole_layer(cfg, group[0])], layer_state(model, group[0])
        else:
            sources, state, outputs, report = compress_group(model, runner, group, config, widths.get(tuple(group)),
                                                             targets)
            reports.append({"group": group, **report})
        layers.append(sources)
        states.append(state)
        if n_dropped:
            influences.append(block_influence(runner.hidden, outputs))
        if skip is not None:
            block = model.model.layers[group[0]] if len(group) == 1 else loaded_decoder_layer(
                cfg, group[0], state, *block_widths(sources), runner.device, model.dtype)
            skip.step(block, layer_type, runner.hidden)
        runner.advance(outputs)
    params = {"groups": groups, "group_reports": reports}
    if n_dropped:
        params |= {"block_influence": [round(v, 6) for v in influences]}
        scores = influences
        if skip is not None:
            base, scores = skip.increases(model, runner.hidden)
            params |= {"calibration_loss": round(base, 6), "skip_loss_increase": [round(v, 6) for v in scores]}
        dropped = lowest_influence(scores, n_dropped)
        logger.info("FlattenGPT removes the blocks %s (%s %s)", [groups[i] for i in dropped],
                    "BI" if skip is None else "loss increase", [round(scores[i], 4) for i in dropped])
        layers = [sources for i, sources in enumerate(layers) if i not in dropped]
        states = drop_layer_states(states, dropped)
        params |= {"removed_blocks": [groups[i] for i in dropped]}
    if similarity is not None:
        params["similarity_matrix"] = [[round(v, 5) for v in row] for row in similarity.tolist()]
    plan = MergePlan(method="flattengpt", source_num_hidden_layers=n_layers, layers=layers, method_params=params)
    return plan, states


def scored_batches(runner: LayerwiseRunner, config: FlattenGPTConfig) -> slice:
    """The calibration batches `removal_score='loss'` is measured on: those held out of every refit when there
    are any (`holdout_fraction`), else the first `similarity_tokens` tokens' worth."""
    fit, held = runner.split(config.holdout_fraction)
    if held is not None:
        return slice(len(fit.hidden), None)
    return slice(0, len(runner.head(config.similarity_tokens).hidden))


def check_groups(config: FlattenGPTConfig, model_config) -> None:
    """Given groups must fit the model's depth and remove as many layers as asked (before any compute)."""
    if config.fixed_groups is not None:
        n_layers = model_config.num_hidden_layers
        given_groups(config.fixed_groups, n_layers, depth_split(n_layers, config)[0])


def _label(params: dict) -> str:
    """The report's name of a FlattenGPT variant: the options that change what kind of model it is."""
    label = "flattengpt"
    # Plans from before a grouping option existed record nothing: cosine similarity, rated by the group's inputs.
    if params.get("fixed_groups"):
        label += " (fixed groups)"
    elif params.get("similarity_metric", "cosine") == "cosine":
        label += " (cosine grouping)"
    elif params.get("group_score", "input") == "input":
        label += " (input grouping)"
    if params.get("width_policy") in ("global", "split"):
        label += f" ({params['width_policy']} widths)"
    if params.get("prune") is False:
        label += " (depth-only)"
    if params.get("similarity") == "iterative":
        label += " (iterative)"
    if params.get("removed_blocks"):
        label += " (+ removal by loss)" if params.get("removal_score") == "loss" else " (+ removal)"
    return label


def _summary(params: dict) -> str:
    """The model card's account of what was done, from the plan's options."""
    if params.get("fixed_groups"):
        grouping = f"The runs of adjacent layers {params['fixed_groups']}, given by hand (`--fixed-groups`),"
    else:
        grouping = ("Runs of adjacent layers chosen by the similarity of their hidden states (see the plan's "
                    "similarity_metric and group_score)")
    flattened = (f"{grouping} were flattened into one wide block each (their attention heads and MLP channels side "
                 "by side, RMSNorm weights folded in)")
    removal = ""
    if params.get("removed_blocks"):
        rule = ("whose skipping raised the next-token loss on the same calibration text least (`--removal-score loss`"
                if params.get("removal_score") == "loss" else
                "with the lowest Block Influence on the same calibration text (ShortGPT's rule")
        removal = (f" Then the {len(params['removed_blocks'])} blocks of the flattened model {rule}; original layers "
                   f"{params['removed_blocks']}, `--remove-fraction {params.get('remove_fraction')}`) were removed "
                   "whole.")
    if params.get("prune") is False:
        return f"{flattened} and kept whole: fewer, wider layers at the full parameter count.{removal}"
    widths = {
        "global": "to per-block widths chosen by one ranking of every head and channel across blocks",
        "split": "to one dense layer's parameters, split between heads and channels as each block's refit error "
                 "said best",
    }.get(params.get("width_policy", "uniform"), "to the dense layer's widths")
    return (f"{flattened}, and each wide block was pruned back {widths}: key/value groups scored by the error they "
            "leave after a least-squares refit of o_proj, MLP channels by ridge leverage scores with a closed-form "
            f"least-squares refit of down_proj.{removal}")


register_method(MethodSpec(
    name="flattengpt", config_class=FlattenGPTConfig, run=flattengpt, label=_label, check=check_groups,
    title="FlattenGPT", paper="[arXiv:2602.08858](https://arxiv.org/abs/2602.08858)",
    summary=_summary,
    citation="@article{xu2026flattengpt,\n  title   = {Depth Compression for Transformer with Layer Flattening},\n"
             "  author  = {Xu, Ruihan and Guo, Qingpei and Zhu, Yao and Ji, Xiangyang and Yang, Ming and Zhang, Shiliang},\n"
             "  journal = {arXiv preprint arXiv:2602.08858},\n  year    = {2026}\n}",
))
