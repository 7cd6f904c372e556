"""Flatten one group of adjacent layers into a wide block and prune it back (FlattenGPT's core step).

All statistics are gathered on the layer-wise runner's current inputs (the already-compressed
prefix). See `flatten_hf.methods.flattengpt` for the pipeline and the reasons behind each choice.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedModel

from ..adapters import adapter_for, head_dim_of, layer_sizes, linear_weights, loaded_decoder_layer
from ..assemble import layer_state, whole_layer
from ..calibration import LayerwiseRunner, capture, input_of, layer_type_of
from ..ops.channel_selection import ridge_leverage_scores, top_k
from ..ops.compensation import least_squares_refit, relative_error, ridge_lambda
from ..ops.folding import fold_norms
from ..ops.head_selection import query_heads, select_kv_groups
from ..ops.layer_weights import LayerState, concat, select
from ..ops.width_allocation import equal_budget_splits
from ..plan import SourceSlice
from .replaceme import ReplaceMeConfig, absorbing_layer, fit_block

logger = logging.getLogger(__name__)


def _out(result) -> torch.Tensor:
    return result[0] if isinstance(result, tuple) else result


def _add_gram(total: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """total + a^T b: the per-batch product in float32, the running sum over batches in `dtype`
    (float64 by default; float32 halves the memory of a wide MLP's Gram matrix), in place."""
    product = (a.T @ b).to(dtype)
    return product if total is None else total.add_(product)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, L, d] -> [B*L, d] in float32 (the per-batch Gram products run in float32, sums in float64)."""
    return x.reshape(-1, x.shape[-1]).float()


def token_scale(reference: torch.Tensor, weighting: str) -> torch.Tensor | float:
    """What each token's error is divided by in the fits and the judging of a block: 1 ('uniform', plain least
    squares) or the root-mean-square of that token's `reference` hidden state ('norm'), shaped [B*L, 1].

    Every consumer of the residual stream reads it through an RMSNorm, which divides each token by its own
    RMS: an error e_t on token t moves the next layer's input by about e_t / rms(h_t). Plain least squares
    instead weighs tokens by their absolute size, and from the middle layers of SmolLM2 on the first token of
    every sequence (the attention sink, with a hidden state ~150x the median norm) holds 95-98% of the hidden
    states' squared norm, so a block's relative error is mostly the sink's.
    """
    if weighting == "uniform":
        return 1.0
    return _tokens(reference).pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)


class GroupFlattener:
    """Flatten one group of adjacent layers and prune it to the given widths, on the runner's inputs."""

    def __init__(self, model: PreTrainedModel, runner: LayerwiseRunner, group: list[int], config):
        self.model, self.runner, self.group, self.options = model, runner, group, config
        self.cfg = model.config
        self.roles = roles = adapter_for(self.cfg).roles
        self.members = [model.model.layers[i] for i in group]
        self.layer_type = layer_type_of(self.cfg, group[0])
        self.head_dim = head_dim_of(self.cfg)
        self.gram_dtype = getattr(torch, config.gram_dtype)
        # Members may differ in width (an input compressed with per-layer widths); the wide block is their sum.
        sizes = [layer_sizes(self.cfg, i) for i in group]
        self.n_rep = sizes[0][0] // sizes[0][1]
        if any(q != kv * self.n_rep for q, kv, _ in sizes):
            raise ValueError(f"Layers {group} pair different numbers of query heads with each key/value head; they "
                             "cannot be flattened into one attention block.")
        self.kv_offsets = [sum(kv for _, kv, _ in sizes[:j]) for j in range(len(sizes) + 1)]
        self.channel_offsets = [sum(c for _, _, c in sizes[:j]) for j in range(len(sizes) + 1)]
        self.wide_state = concat([fold_norms(layer_state(model, i), roles) for i in group], roles)
        self.wide = self._layer(self.wide_state, self.kv_offsets[-1] * self.n_rep, self.kv_offsets[-1],
                                self.channel_offsets[-1])
        # the wide block's sublayers, by role
        self.attention, self.attention_norm = roles.module(self.wide, "attention"), roles.module(self.wide, "attention_norm")
        self.mlp, self.mlp_norm = roles.module(self.wide, "mlp"), roles.module(self.wide, "mlp_norm")
        self.attention_output, self.mlp_output = (roles.module(self.wide, "attention_output"),
                                                  roles.module(self.wide, "mlp_output"))
        self._reference = None

    def _layer(self, state: LayerState, heads: int, kv_heads: int, channels: int) -> nn.Module:
        return loaded_decoder_layer(self.cfg, self.group[0], state, heads, kv_heads, channels, self.runner.device,
                                    self.model.dtype)

    def _kwargs(self, batch_kwargs: dict) -> dict:
        return batch_kwargs[self.layer_type]

    def _bias(self, name: str) -> torch.Tensor | float:
        return self.wide_state[name].float() if name in self.wide_state else 0.0

    def params(self, kv_groups: int, channels: int) -> int:
        """Weights of a block with this many key/value groups and MLP channels (norms and biases aside)."""
        return linear_weights(self.cfg, kv_groups * self.n_rep, kv_groups, channels)

    def _run_members(self, x: torch.Tensor, kw: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The members one after the other on `x`: the final output, the first member's output, and the
        sum of the members' attention-branch outputs in that run."""
        attn_outputs = []
        handles = [self.roles.module(m, "attention_output").register_forward_hook(
            lambda mod, a, o: attn_outputs.append(o)) for m in self.members]
        try:
            h = first = _out(self.members[0](x, **kw))
            for member in self.members[1:]:
                h = _out(member(h, **kw))
        finally:
            for handle in handles:
                handle.remove()
        return h, first, sum(attn_outputs)

    @torch.no_grad()
    def unit_energies(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Energy that each key/value group and each MLP channel of the wide block writes into the
        residual stream (E|z|^2 times the squared norm of its output-projection rows), as a fraction of
        the group's total update energy; plus the sequential outputs, to advance a dense runner."""
        o_rows = self.attention_output.weight.float().pow(2).sum(0)
        d_rows = self.mlp_output.weight.float().pow(2).sum(0)
        kv_energy, channel_energy, update, outputs = 0.0, 0.0, 0.0, []
        for x, kwargs in self.runner.iter_batches():
            kw = self._kwargs(kwargs)
            h = self._run_members(x, kw)[0]
            outputs.append(h)
            update += ((h - x).float() ** 2).sum().item()
            with capture(self.attention_output, "input") as z:
                attn = _out(self.attention(self.attention_norm(x), **kw))
            kv_energy = kv_energy + (_tokens(z[0]) ** 2).sum(0) * o_rows
            channel_energy = channel_energy + (self._mlp_hidden(self.mlp_norm(x + attn)) ** 2).sum(0) * d_rows
        kv_energy = kv_energy.view(-1, self.n_rep * self.head_dim).sum(1)
        update = max(update, 1e-300)  # a dead group (all inputs zero) has no energy to share
        return kv_energy.double() / update, channel_energy.double() / update, outputs

    @torch.no_grad()
    def sequential_reference(self) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, float]:
        """Run the members one after the other (the truth the block must reproduce) and gather the
        attention statistics of the wide block: Z^T Z, Z^T T_attn and ||T_attn||^2."""
        targets, gram, cross, tsq = [], None, None, 0.0
        self.first_member_outputs = []  # the "keep the first member" candidate, for free
        b_o = self._bias(self.roles.weight_name("attention_output", "bias"))
        for x, kwargs in self.runner.iter_batches():
            kw = self._kwargs(kwargs)
            h, first, attention = self._run_members(x, kw)
            targets.append(h)
            self.first_member_outputs.append(first)
            scale = token_scale(h, self.options.token_weighting)
            t = (_tokens(attention) - b_o) / scale
            with capture(self.attention_output, "input") as z:
                self.attention(self.attention_norm(x), **kw)
            z = _tokens(z[0]) / scale
            gram, cross = _add_gram(gram, z, z, self.gram_dtype), _add_gram(cross, z, t, self.gram_dtype)
            tsq += (t.double() ** 2).sum().item()
        return targets, gram, cross, tsq

    @torch.no_grad()
    def mlp_statistics(self, attention: nn.Module, targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """C = psi^T psi and psi^T T_mlp of the wide MLP, after the pruned attention, against what the
        MLP must add to reach the sequential output."""
        gram, cross = None, None
        b_d = self._bias(self.roles.weight_name("mlp_output", "bias"))
        attn, attn_norm = self.roles.module(attention, "attention"), self.roles.module(attention, "attention_norm")
        for (x, kwargs), y in zip(self.runner.iter_batches(), targets):
            x1 = x + _out(attn(attn_norm(x), **self._kwargs(kwargs)))
            scale = token_scale(y, self.options.token_weighting)
            psi = self._mlp_hidden(self.mlp_norm(x1)) / scale
            t = (_tokens(y - x1) - b_d) / scale
            gram, cross = _add_gram(gram, psi, psi, self.gram_dtype), _add_gram(cross, psi, t, self.gram_dtype)
        return gram, cross

    def _mlp_hidden(self, u: torch.Tensor) -> torch.Tensor:
        """psi: the wide MLP's hidden activations on normalised input `u` (what its output projection reads)."""
        return _tokens(input_of(self.mlp_output, lambda: self.mlp(u)))

    def _sources(self, kv_groups: list[int], channels: list[int]) -> list[SourceSlice]:
        """Map kept wide-block indices back to (member layer, local index) pairs."""
        sources = []
        kv_at, ch_at = self.kv_offsets, self.channel_offsets
        for j, layer in enumerate(self.group):
            kv = [g - kv_at[j] for g in kv_groups if kv_at[j] <= g < kv_at[j + 1]]
            ch = [c - ch_at[j] for c in channels if ch_at[j] <= c < ch_at[j + 1]]
            if kv or ch:
                q = query_heads(kv, self.n_rep)
                sources.append(SourceSlice(layer, q, kv, ch))
        return sources

    @torch.no_grad()
    def pruned(self, keep_kv: int, keep_channels: int, targets: list[torch.Tensor] | None = None
               ) -> tuple[list[SourceSlice], LayerState, list[torch.Tensor], dict]:
        """The pruned block and its plan, plus the targets it was fitted to and a report of the choices.

        `targets` overrides the block's output target (default: the members' sequential output on the
        block's input), e.g. with the dense model's hidden states to also undo earlier groups' drift.
        """
        opts = self.options
        if self._reference is None:  # one pass of the members serves every width this block is pruned to
            self._reference = self.sequential_reference()
        sequential, gram_a, cross_a, tsq_a = self._reference
        targets = sequential if targets is None else targets
        w_o_name, w_d_name = self.roles.weight_name("attention_output"), self.roles.weight_name("mlp_output")
        w_o = self.wide_state[w_o_name].T  # x @ W layout
        lam_a = ridge_lambda(gram_a, opts.ridge_factor)
        kv_groups, w_o_new, attn_err = select_kv_groups(gram_a, cross_a, tsq_a, w_o, self.n_rep, self.head_dim,
                                                        keep_kv, lam_a, opts.attn_compensation)
        q_heads = query_heads(kv_groups, self.n_rep)
        all_channels = list(range(self.channel_offsets[-1]))
        attn_state = select(self.wide_state, self.roles, q_heads, kv_groups, all_channels, self.head_dim)
        attn_state[w_o_name] = w_o_new.T.to(w_o.dtype).contiguous()
        attention = self._layer(attn_state, len(q_heads), len(kv_groups), len(all_channels))

        gram_m, cross_m = self.mlp_statistics(attention, targets)
        lam_m = ridge_lambda(gram_m, opts.ridge_factor)
        keep = top_k(ridge_leverage_scores(gram_m, lam_m), keep_channels)
        w_d = self.wide_state[w_d_name].T
        w_d_new = least_squares_refit(gram_m[keep][:, keep], cross_m[keep], w_d[keep.to(w_d.device)], lam_m)
        state = select(attn_state, self.roles, list(range(len(q_heads))), list(range(len(kv_groups))), keep.tolist(),
                       self.head_dim)
        state[w_d_name] = w_d_new.T.to(w_d.dtype).contiguous()
        report = {"kv_groups": kv_groups, "attention_rel_error": attn_err / max(tsq_a, 1e-30)}
        return self._sources(kv_groups, keep.tolist()), state, targets, report


def _weighted_energy(x: torch.Tensor, reference: torch.Tensor, weighting: str) -> float:
    """Squared norm of `x`, each token's divided by its `reference` token's squared RMS with 'norm'."""
    return ((_tokens(x) / token_scale(reference, weighting)) ** 2).sum().item()


def _block_error(outputs: list[torch.Tensor], targets: list[torch.Tensor], weighting: str) -> float:
    return sum(_weighted_energy(o.float() - t.float(), t, weighting) for o, t in zip(outputs, targets))


def block_widths(sources: list[SourceSlice]) -> tuple[int, int, int]:
    """(query heads, key/value heads, MLP channels) of the block built from `sources`."""
    return tuple(sum(len(getattr(s, f)) for s in sources) for f in ("q_heads", "kv_heads", "mlp_channels"))


@torch.no_grad()
def compress_group(model: PreTrainedModel, runner: LayerwiseRunner, group: list[int], config,
                   widths: tuple[int, int] | None, targets: list[torch.Tensor] | None = None
                   ) -> tuple[list[SourceSlice], LayerState, list[torch.Tensor], dict]:
    """Flatten one group and prune it to `widths` = (key/value groups, MLP channels), or keep it wide
    (`widths=None`). A pruned block competes with "keep one member whole" (when that fits in the same
    parameter budget); whichever is closest to the target (default: the group's sequential output) wins.
    With `config.width_policy == 'split'` the block is pruned to every split of the same parameters
    between key/value groups and MLP channels (`equal_budget_splits`), and these compete too.

    With `config.holdout_fraction` > 0 the last batches are held out: the block is fitted on the others
    and the candidates are judged on the held-out ones, so that the refit cannot win by fitting the
    very tokens it is judged on. Either way the returned outputs cover every batch.
    """
    cfg = model.config
    if widths is None:
        flattener = GroupFlattener(model, runner, group, config)
        sources = [whole_layer(cfg, i) for i in group]
        outputs = runner.run(flattener.wide, flattener.layer_type)
        return sources, flattener.wide_state, outputs, {"choice": "wide"}
    fit, held = runner.split(config.holdout_fraction)
    n_fit = len(fit.hidden)
    flattener = GroupFlattener(model, fit, group, config)
    # never more than the members have (narrower members, from an input with per-layer widths)
    widths = (min(widths[0], flattener.kv_offsets[-1]), min(widths[1], flattener.channel_offsets[-1]))
    splits = [widths]
    if config.width_policy == "split":  # the same parameters, spent differently on attention and MLP
        splits = equal_budget_splits(flattener.params(1, 0), flattener.params(0, 1), *widths,
                                     flattener.kv_offsets[-1], flattener.channel_offsets[-1])
    candidates, pruned = [], {}  # pruned: name -> (widths, report) of each pruned block
    for kv, channels in splits:
        name = "flattened" if len(splits) == 1 else f"flattened {kv} kv groups, {channels} channels"
        sources, state, fit_targets, report = flattener.pruned(kv, channels,
                                                               targets=None if targets is None else targets[:n_fit])
        pruned[name] = ((kv, channels), report)
        candidates.append((name, sources, state))
    if flattener.params(*widths) >= flattener.params(cfg.num_key_value_heads, cfg.intermediate_size):
        candidates += [(f"keep layer {i}", [whole_layer(cfg, i)], layer_state(model, i)) for i in group]
        if config.map_candidate:
            mapped, _, _ = fit_block(model, fit, group[0], group[-1] + 1, ReplaceMeConfig())
            candidates.append((f"layer {group[0]} + linear map", absorbing_layer(cfg, group[0], group[-1] + 1), mapped))
    if held is None:
        judge, judge_targets = fit, fit_targets
    else:
        judge = held
        judge_targets = targets[n_fit:] if targets is not None else [
            flattener._run_members(x, flattener._kwargs(kw))[0] for x, kw in held.iter_batches()]
    target_sq = sum(_weighted_energy(t, t, config.token_weighting) for t in judge_targets)
    best, errors = None, {}
    for name, srcs, st in candidates:
        layer = flattener._layer(st, *block_widths(srcs))
        if held is None and name == f"keep layer {group[0]}":
            outputs = flattener.first_member_outputs  # already computed on the fit batches
        else:
            outputs = judge.run(layer, flattener.layer_type)
        errors[name] = relative_error(_block_error(outputs, judge_targets, config.token_weighting), target_sq)
        if best is None or errors[name] < errors[best[0]]:
            best = (name, srcs, st, outputs, layer)
    name, srcs, st, outputs, layer = best
    if held is not None:
        outputs = runner.run(layer, flattener.layer_type)
    chosen_widths, report = pruned.get(name, pruned[candidates[0][0]])  # a kept member: the dense split's report
    report.update(choice=name, widths=list(chosen_widths), rel_errors={k: round(v, 8) for k, v in errors.items()},
                  judged_on="held-out" if held is not None else "calibration")
    logger.info("group %s: %s (relative errors %s)", group, name, report["rel_errors"])
    return srcs, st, outputs, report
