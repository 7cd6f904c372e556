"""FlattenGPT end to end on tiny models: plans, widths, and the never-worse-than-dropping property."""

from __future__ import annotations

import pytest
import torch

from flatten_hf import CalibrationConfig, FlattenGPTConfig, compress
from flatten_hf.adapters import get_adapter
from flatten_hf.calibration import LayerwiseRunner, layer_type_of
from flatten_hf.grouping import greedy_groups
from flatten_hf.methods.flatten_block import compress_group
from flatten_hf.methods.registry import get_method
from flatten_hf.plan import MergePlan

from .tiny import tiny_model


def calibration(n=6, length=16, seed=0):
    return torch.randint(3, 96, (n, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_flattened_block_is_never_worse_than_dropping_a_member(arch):
    model = tiny_model(arch, attn="eager")
    ids = calibration()
    for group in ([0, 1], [1, 2], [2, 3]):
        runner = LayerwiseRunner(model, ids, batch_size=4)
        for i in range(group[0]):
            runner.advance(runner.run(model.model.layers[i], layer_type_of(model.config, i)))
        x = runner.hidden
        kind = layer_type_of(model.config, group[0])
        target = runner.run(model.model.layers[group[1]], kind, inputs=runner.run(model.model.layers[group[0]], kind))

        def error(outputs):
            return sum(((o - t) ** 2).sum().item() for o, t in zip(outputs, target))

        drop_second = error(runner.run(model.model.layers[group[0]], kind, inputs=x))
        drop_first = error(runner.run(model.model.layers[group[1]], kind, inputs=x))
        _, _, outputs, report = compress_group(model, runner, group, FlattenGPTConfig(num_layers=1), (2, 48))
        assert error(outputs) <= min(drop_first, drop_second) * (1 + 1e-6), report


def test_plan_records_groups_and_kept_heads(arch):
    model = tiny_model(arch)
    out = compress(model, FlattenGPTConfig(num_layers=1), calibration_ids=calibration())
    plan = out.config.flatten
    assert plan["method"] == "flattengpt" and len(plan["layers"]) == 3
    merged = [g for g in plan["method_params"]["groups"] if len(g) > 1]
    assert len(merged) == 1 and len(merged[0]) == 2
    # uniform widths: a stock checkpoint, each new layer at the dense widths (for Qwen3 only when no layer
    # mixes heads of two layers, see test_stock_classes_hold_mixed_heads_unless_heads_share_a_norm)
    adapter = get_adapter(arch)
    stock = adapter.stock_can_hold(MergePlan.from_config(out.config))
    assert stock or arch == "qwen3"
    assert type(out) is (adapter.stock_model_class if stock else adapter.flatten_model_class)
    assert torch.isfinite(out(calibration(1)).logits).all()


def test_depth_only_flattening_keeps_every_head_and_channel(arch, tmp_path):
    model = tiny_model(arch)
    out = compress(model, FlattenGPTConfig(num_layers=2, prune=False), calibration_ids=calibration())
    assert type(out) is get_adapter(arch).flatten_model_class
    widths = sorted(out.config.num_attention_heads_per_layer)
    assert sum(out.config.num_attention_heads_per_layer) == 4 * 4 and widths[-1] >= 8
    assert sum(out.config.intermediate_size_per_layer) == 4 * 48
    params = lambda m: sum(p.numel() for p in m.model.layers.parameters())  # noqa: E731
    norms = 2 * 64 * 2  # two norms of hidden size per merged-away layer
    # Qwen3's q/k norms: one [16] vector each per stock layer, a row per head in the Flattened ones
    per_head = (4 * 4 + 4 * 2) * 16 - 4 * 2 * 16 if arch == "qwen3" else 0
    assert params(out) == params(model) - norms + per_head
    out.save_pretrained(tmp_path)
    assert (tmp_path / "modeling_flatten.py").exists()


def test_global_width_policy_spends_the_uniform_budget(arch):
    model = tiny_model(arch)
    uniform = compress(model, FlattenGPTConfig(num_layers=2), calibration_ids=calibration())
    spread = compress(model, FlattenGPTConfig(num_layers=2, width_policy="global"), calibration_ids=calibration())
    # the budget is the projections' (Qwen3's Flattened layers also hold a q/k norm row per head)
    count = lambda m: sum(p.numel() for n, p in m.named_parameters() if "norm" not in n)  # noqa: E731
    assert count(spread) <= count(uniform)
    assert count(uniform) - count(spread) < 3 * 64  # at most part of one MLP channel left unspent
    plan = spread.config.flatten
    assert all("widths" in r for r in plan["method_params"]["group_reports"])
    assert torch.isfinite(spread(calibration(1)).logits).all()


@torch.no_grad()
def test_split_width_policy_is_never_further_from_the_target_than_the_dense_split(arch):
    """'split' prunes a block to every split of one layer's parameters between attention and MLP; the dense
    split is among them and all are judged on the same tokens, so the winner is at least as close."""
    model = tiny_model(arch, attn="eager")
    reports = {}
    for policy in ("uniform", "split"):
        runner = LayerwiseRunner(model, calibration(), batch_size=4)
        reports[policy] = compress_group(model, runner, [0, 1], FlattenGPTConfig(num_layers=1, width_policy=policy),
                                         (2, 48))[3]
    uniform, split = reports["uniform"]["rel_errors"], reports["split"]["rel_errors"]
    # tiny layers: a key/value group (two query heads) costs as much as 32 MLP channels
    assert [k for k in split if k.startswith("flattened")] == [
        "flattened 2 kv groups, 48 channels", "flattened 1 kv groups, 80 channels", "flattened 3 kv groups, 16 channels"]
    assert split["flattened 2 kv groups, 48 channels"] == pytest.approx(uniform["flattened"], rel=1e-6)
    assert min(split.values()) <= min(uniform.values()) * (1 + 1e-6)
    chosen = reports["split"]
    if chosen["choice"].startswith("flattened"):
        assert chosen["choice"] == "flattened {} kv groups, {} channels".format(*chosen["widths"])


def test_split_width_policy_keeps_the_parameter_count(arch, tmp_path):
    model = tiny_model(arch)
    uniform = compress(model, FlattenGPTConfig(num_layers=2), calibration_ids=calibration())
    split = compress(model, FlattenGPTConfig(num_layers=2, width_policy="split"), calibration_ids=calibration())
    count = lambda m: sum(p.numel() for n, p in m.named_parameters() if "norm" not in n)  # noqa: E731
    assert 0 <= count(uniform) - count(split) < 3 * 64  # at most one MLP channel's worth left unspent
    assert torch.isfinite(split(calibration(1)).logits).all()
    split.save_pretrained(tmp_path)
    params = split.config.flatten["method_params"]
    assert all(len(r["widths"]) == 2 for r in params["group_reports"])


def test_iterative_similarity_merges_the_requested_number_of_layers(arch):
    model = tiny_model(arch)
    out = compress(model, FlattenGPTConfig(num_layers=2, similarity="iterative"), calibration_ids=calibration())
    groups = out.config.flatten["method_params"]["groups"]
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3] and len(groups) == 2


@pytest.mark.parametrize("similarity", ["one-shot", "iterative"])
def test_output_group_score_follows_the_recorded_similarity_of_input_and_output(arch, similarity):
    model = tiny_model(arch)
    config = FlattenGPTConfig(num_layers=1, group_score="output", similarity=similarity)
    params = compress(model, config, calibration_ids=calibration()).config.flatten["method_params"]
    s = torch.tensor(params["similarity_matrix"])
    assert s.shape == (5, 5)  # four layers' inputs and the final hidden state
    # one merge: both modes see the dense model, so both pick the pair whose input is closest to its output
    assert params["groups"] == greedy_groups(s, 1, group_score="output")
    best = max(range(3), key=lambda i: s[i, i + 2].item())
    assert [best, best + 1] in params["groups"]


def test_fixed_groups_rebuild_the_similarity_groups_exactly(arch):
    """Giving a plan's own groups by hand reproduces its weights: the grouping is the only thing replaced."""
    model, ids = tiny_model(arch), calibration()
    chosen = compress(model, FlattenGPTConfig(num_layers=2), calibration_ids=ids)
    merged = [g for g in chosen.config.flatten["method_params"]["groups"] if len(g) > 1]
    text = ",".join(f"{g[0]}-{g[-1]}" for g in merged)
    fixed = compress(model, FlattenGPTConfig(num_layers=2, fixed_groups=text), calibration_ids=ids)
    params = fixed.config.flatten["method_params"]
    assert params["fixed_groups"] == text and "similarity_matrix" not in params
    assert fixed.config.flatten["layers"] == chosen.config.flatten["layers"]
    for (name, a), b in zip(chosen.state_dict().items(), fixed.state_dict().values()):
        assert torch.equal(a, b), name


def test_fixed_groups_flatten_where_they_are_told(arch):
    model = tiny_model(arch)
    out = compress(model, FlattenGPTConfig(num_layers=1, fixed_groups="0-1"), calibration_ids=calibration())
    assert out.config.flatten["method_params"]["groups"] == [[0, 1], [2], [3]]


def test_remove_fraction_is_flattening_then_shortgpt_in_one_pass(arch):
    """The first merges flattened, then the lowest-Block-Influence blocks removed: the same model as the two
    commands (`compress` flattengpt, then `compress` shortgpt on its output), with the choice in the plan."""
    model, ids = tiny_model(arch), calibration()
    one = compress(model, FlattenGPTConfig(num_layers=2, remove_fraction=0.5), calibration_ids=ids)
    flat = compress(model, FlattenGPTConfig(num_layers=1), calibration_ids=ids)
    two = compress(flat, "shortgpt", calibration_ids=ids, num_layers=1)
    assert one.config.num_hidden_layers == two.config.num_hidden_layers == 2
    params = one.config.flatten["method_params"]
    merged = [g for g in params["groups"] if len(g) > 1]
    assert len(merged) == 1 and len(params["removed_blocks"]) == 1 and len(params["block_influence"]) == 3
    dropped = two.config.flatten["method_params"]["removed_layers"]
    assert params["removed_blocks"] == [flat.config.flatten["method_params"]["groups"][i] for i in dropped]
    assert one.config.flatten["merge_plan"] == two.config.flatten["merge_plan"]
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        assert torch.equal(a, b), name
    spec = get_method("flattengpt")  # the card and the report say what was done
    assert spec.label_of(params).endswith("(+ removal)") and params["remove_fraction"] == 0.5
    assert f"original layers {params['removed_blocks']}" in spec.summary_of(params)


@pytest.mark.parametrize("holdout_fraction, scored", [(0.0, slice(None)), (0.5, slice(4, None))])
def test_removal_by_loss_removes_the_block_whose_skipping_costs_least(arch, holdout_fraction, scored):
    """`removal_score='loss'`: the recorded increases are the flattened model's own next-token loss with each
    block skipped, on the calibration rows (or, with a holdout, on the batch no refit saw: rows 4-5 of three
    batches of two), and the cheapest block is the one removed."""
    model, all_ids = tiny_model(arch), calibration()
    settings = CalibrationConfig(batch_size=2)
    one = compress(model, FlattenGPTConfig(num_layers=2, remove_fraction=0.5, removal_score="loss",
                                           holdout_fraction=holdout_fraction), calibration_ids=all_ids,
                   calibration=settings)
    flat = compress(model, FlattenGPTConfig(num_layers=1, holdout_fraction=holdout_fraction), calibration_ids=all_ids,
                    calibration=settings)
    ids = all_ids[scored]
    params = one.config.flatten["method_params"]
    layers, types = flat.model.layers, getattr(flat.config, "layer_types", None)
    with torch.no_grad():
        base = flat(input_ids=ids, labels=ids, use_cache=False).loss.item()
        increases = []
        for j in range(len(layers)):  # Qwen2/3 read each position's mask from config.layer_types: skip it there too
            flat.model.layers = torch.nn.ModuleList([layer for i, layer in enumerate(layers) if i != j])
            flat.config.num_hidden_layers = len(layers) - 1
            if types:
                flat.config.layer_types = [t for i, t in enumerate(types) if i != j]
            increases.append(flat(input_ids=ids, labels=ids, use_cache=False).loss.item() - base)
    assert params["calibration_loss"] == pytest.approx(base, abs=1e-4)
    assert params["skip_loss_increase"] == pytest.approx(increases, abs=1e-4)
    cheapest = min(range(len(increases)), key=increases.__getitem__)
    groups = flat.config.flatten["method_params"]["groups"]
    assert params["removed_blocks"] == [groups[cheapest]] and one.config.num_hidden_layers == 2
    spec = get_method("flattengpt")
    assert spec.label_of(params).endswith("(+ removal by loss)")
    assert "raised the next-token loss" in spec.summary_of(params)


def test_bad_options_are_explained():
    with pytest.raises(ValueError, match="width_policy must be one of"):
        FlattenGPTConfig(ratio=0.2, width_policy="local")
    with pytest.raises(ValueError, match="similarity must be one of"):
        FlattenGPTConfig(ratio=0.2, similarity="twice")
    with pytest.raises(ValueError, match="target must be one of"):
        FlattenGPTConfig(ratio=0.2, target="teacher")
    with pytest.raises(ValueError, match="--fixed-groups must be comma-separated layer ranges"):
        FlattenGPTConfig(ratio=0.2, fixed_groups="1 2")
    with pytest.raises(ValueError, match="removal_score must be one of"):
        FlattenGPTConfig(ratio=0.2, removal_score="bi")
    with pytest.raises(ValueError, match="give that too"):
        FlattenGPTConfig(ratio=0.2, removal_score="loss")
    with pytest.raises(ValueError, match=r"remove_fraction must be in \[0, 1\)"):
        FlattenGPTConfig(ratio=0.2, remove_fraction=1.0)


def test_dense_target_equals_sequential_target_before_any_drift(arch):
    """With one merge the compressed prefix is still the dense one, so both targets are the same tensors."""
    model = tiny_model(arch)
    ids = calibration()
    a = compress(model, FlattenGPTConfig(num_layers=1, target="sequential"), calibration_ids=ids)
    b = compress(model, FlattenGPTConfig(num_layers=1, target="dense"), calibration_ids=ids)
    assert a.config.flatten["layers"] == b.config.flatten["layers"]
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_bfloat16_weights_compress_to_bfloat16(arch):
    """The bf16 pipeline matches the fp32 one up to bf16 noise (statistics are float32/64 either way)."""
    model = tiny_model(arch)
    ids = calibration()
    reference = compress(model, FlattenGPTConfig(num_layers=1), calibration_ids=ids)
    half_model = tiny_model(arch).to(torch.bfloat16)
    half = compress(half_model, FlattenGPTConfig(num_layers=1), calibration_ids=ids)
    assert half.dtype == torch.bfloat16
    # bf16 rounding may swap a few near-tied MLP channels, not the grouping
    assert half.config.flatten["method_params"]["groups"] == reference.config.flatten["method_params"]["groups"]
    x = ids[:1]
    rounding = (half_model(x).logits.float() - model(x).logits).abs().mean()
    assert (half(x).logits.float() - reference(x).logits).abs().mean() < 4 * rounding


def test_split_runner_holds_out_the_last_batches():
    model = tiny_model("llama")
    runner = LayerwiseRunner(model, torch.randint(3, 90, (16, 8)), batch_size=4)
    fit, held = runner.split(0.25)
    assert (len(fit.hidden), len(held.hidden)) == (3, 1) and held.hidden[0] is runner.hidden[3]
    assert runner.split(0.1) == (runner, None)  # less than one batch: nothing held out


def test_holdout_judges_the_candidates_on_unseen_batches(arch):
    model = tiny_model(arch)
    ids = torch.randint(3, 90, (16, 16), generator=torch.Generator().manual_seed(0))
    out = compress(model, "flattengpt", calibration_ids=ids, calibration=CalibrationConfig(batch_size=4),
                   num_layers=1, holdout_fraction=0.25)
    (report,) = out.config.flatten["method_params"]["group_reports"]
    assert report["judged_on"] == "held-out" and report["choice"] in report["rel_errors"]
    assert report["rel_errors"][report["choice"]] == min(report["rel_errors"].values())
    assert out.config.num_hidden_layers == 3


def _runner_at_layer_1(model, ids):
    runner = LayerwiseRunner(model, ids, batch_size=4)
    runner.advance(runner.run(model.model.layers[0]))
    return runner


def test_the_map_candidate_reproduces_a_group_that_is_a_linear_map(arch):
    """Layer 2 writes nothing into the residual stream: for the group [1, 2], "layer 1 + linear map" (here the
    identity) reproduces the group exactly on the held-out batches, and its plan entry absorbs layer 2."""
    model = tiny_model(arch, intermediate_size=128)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
        if arch == "qwen2":
            model.model.layers[2].self_attn.o_proj.bias = None
    runner = _runner_at_layer_1(model, torch.randint(3, 90, (16, 16), generator=torch.Generator().manual_seed(0)))
    config = FlattenGPTConfig(num_layers=1, map_candidate=True, holdout_fraction=0.25)
    sources, _, outputs, report = compress_group(model, runner, [1, 2], config, (2, 128))
    assert report["judged_on"] == "held-out"
    assert report["rel_errors"]["layer 1 + linear map"] < 1e-10 < report["rel_errors"]["flattened"]
    expected = runner.run(model.model.layers[2], inputs=runner.run(model.model.layers[1]))
    assert all(torch.allclose(o, e, atol=1e-5) for o, e in zip(outputs, expected))
    _, _, _, mapped_report = compress_group(model, runner, [1, 2], FlattenGPTConfig(num_layers=1, map_candidate=True),
                                            (2, 128))
    assert mapped_report["choice"] in ("keep layer 1", "layer 1 + linear map")  # both exact here: a tie


def test_the_map_candidate_is_never_worse_than_keeping_the_first_layer_on_its_fit(arch):
    model = tiny_model(arch, intermediate_size=128)
    runner = _runner_at_layer_1(model, torch.randint(3, 90, (16, 16), generator=torch.Generator().manual_seed(0)))
    _, _, _, report = compress_group(model, runner, [1, 2], FlattenGPTConfig(num_layers=1, map_candidate=True),
                                     (2, 128))
    errors = report["rel_errors"]
    assert errors["layer 1 + linear map"] < errors["keep layer 1"]


def test_float32_grams_choose_the_same_block_as_float64(arch):
    """`gram_dtype="float32"` (half the memory of a wide MLP's Gram): same heads and channels, refit close."""
    model = tiny_model(arch, num_hidden_layers=6, intermediate_size=96)
    ids = torch.randint(3, 96, (8, 32), generator=torch.Generator().manual_seed(1))
    wide = compress(model, "flattengpt", calibration_ids=ids, num_layers=2)
    narrow = compress(model, "flattengpt", calibration_ids=ids, num_layers=2, gram_dtype="float32")
    assert MergePlan.from_config(wide.config).layers == MergePlan.from_config(narrow.config).layers
    for (name, a), b in zip(wide.state_dict().items(), narrow.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
