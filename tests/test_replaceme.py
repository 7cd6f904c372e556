"""ReplaceMe: the closest block removed, one linear map estimated and folded into the down projection."""

from __future__ import annotations

import pytest
import torch

from flatten_hf import compress
from flatten_hf.methods.replaceme import block_sizes, choose_blocks
from flatten_hf.ops.linear_replacement import cosine_map, fold_into_down_proj, lstsq_map

from .tiny import tiny_model

ESTIMATORS = ("lstsq", "cosine")


def ids(n: int = 8, length: int = 24) -> torch.Tensor:
    return torch.randint(3, 90, (n, length), generator=torch.Generator().manual_seed(0))


def test_lstsq_recovers_an_exact_linear_map():
    gen = torch.Generator().manual_seed(0)
    m, r, a = (torch.randn(500, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    a = a[:16]
    y = r + m @ a
    transform = lstsq_map(m.T @ m, m.T @ (y - r))
    assert torch.allclose(transform, a, atol=1e-8)


def test_cosine_map_starts_at_the_identity_and_lowers_the_cosine_distance():
    gen = torch.Generator().manual_seed(0)
    m, r = torch.randn(2048, 16, generator=gen), torch.randn(2048, 16, generator=gen)
    a = torch.eye(16) + 0.3 * torch.randn(16, 16, generator=gen)
    y = r + m @ a
    loss = lambda t: (1 - torch.nn.functional.cosine_similarity(r + m @ t.float(), y, dim=-1)).mean()  # noqa: E731
    transform = cosine_map(m, r, y, epochs=20, lr=1e-2)
    assert loss(transform) < 0.2 * loss(torch.eye(16))
    # at an exact fit the gradient is only rounding noise, which Adam turns into steps of at most lr each:
    # 2 epochs x 2 batches of 1024 tokens move the identity by at most 4 x 1e-4
    drift = cosine_map(m, r, r + m, epochs=2) - torch.eye(16, dtype=torch.float64)
    assert drift.abs().max() <= 4e-4


def test_fold_into_down_proj_multiplies_the_output_by_the_map():
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(12, 8, bias=True).double()
    t = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    weight, bias = fold_into_down_proj(linear.weight.data, linear.bias.data, t)
    assert torch.allclose(x @ weight.T + bias, linear(x).detach() @ t, atol=1e-12)


def test_block_selection_is_greedy_non_overlapping_and_merges_touching_blocks():
    assert block_sizes(5, 2) == [3, 2] and block_sizes(2, 4) == [1, 1] and block_sizes(0, 1) == []
    dist = {(1, 3): 0.5, (2, 4): 0.1, (3, 5): 0.2, (4, 6): 0.05}
    assert choose_blocks(lambda s, e: dist.get((s, e), 1.0), 8, [2]) == [(4, 6)]
    assert choose_blocks(lambda s, e: dist.get((s, e), 1.0), 8, [2, 2]) == [(2, 6)]  # (4,6) then (2,4): merged
    assert choose_blocks(lambda s, e: float(s), 8, [3]) == [(1, 4)]  # never layer 0
    with pytest.raises(ValueError, match="fewer --num-blocks"):
        choose_blocks(lambda s, e: 0.0, 3, [1, 1, 1])


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_removing_nothing_rebuilds_the_same_model(arch, estimator):
    model = tiny_model(arch)
    out = compress(model, "replaceme", calibration_ids=ids(), num_layers=0, estimator=estimator,
                   stock_if_uniform=False)
    assert out.config.flatten["merge_plan"] == [[i] for i in range(4)]
    assert torch.equal(out(ids()).logits, model(ids()).logits)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_block_that_is_an_exact_linear_map_is_replaced_exactly(arch, estimator):
    """Layer 2 writes nothing into the residual stream (an identity map): it is the block ReplaceMe picks,
    the map it estimates reproduces it, and the compressed model computes what the original did."""
    model = tiny_model(arch, intermediate_size=128)  # M^T M of full rank: the map is determined
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
        if arch == "qwen2":
            model.model.layers[2].self_attn.o_proj.bias = None
    out = compress(model, "replaceme", calibration_ids=ids(), num_layers=1, estimator=estimator)
    plan = out.config.flatten
    assert type(out).__name__ == type(model).__name__  # stock architecture, no added parameters
    assert plan["merge_plan"] == [[0], [1, 2], [3]]  # layer 2 is absorbed by layer 1, which holds its map
    assert plan["layers"][1]["sources"][1] == {"layer": 2, "q_heads": "", "kv_heads": "", "mlp_channels": ""}
    assert plan["method_params"]["removed_blocks"] == [[2, 3]] and plan["method_params"]["folded_into"] == [1]
    assert plan["method_params"]["fits"][0]["removal_rel_error"] == pytest.approx(0.0, abs=1e-12)
    assert plan["method_params"]["fits"][0]["fit_rel_error"] == pytest.approx(0.0, abs=1e-6)
    test = ids(3, 20) + 1
    # Adam's steps on rounding-noise gradients move the cosine map by up to lr per step (10 steps here)
    tolerance = 1e-4 if estimator == "lstsq" else 5e-3
    assert torch.allclose(out(test).logits, model(test).logits, atol=tolerance)


def test_the_map_beats_plain_removal_on_calibration_data(arch):
    model = tiny_model(arch, intermediate_size=128)
    out = compress(model, "replaceme", calibration_ids=ids(16), num_layers=2, num_blocks=2)
    params = out.config.flatten["method_params"]
    assert out.config.num_hidden_layers == 2
    assert all(fit["fit_rel_error"] < fit["removal_rel_error"] for fit in params["fits"])
    removed = [i for a, b in params["removed_blocks"] for i in range(a, b)]
    assert sorted(removed + [g[0] for g in out.config.flatten["merge_plan"]]) == [0, 1, 2, 3]
    assert sum(out.config.flatten["merge_plan"], []) == [0, 1, 2, 3]  # every original layer is accounted for


def test_recovery_distils_the_folded_layer_toward_the_state_after_the_block():
    from flatten_hf.distillation import changed_layers, teacher_layers
    from flatten_hf.recovery import plan_of

    model = tiny_model("llama", intermediate_size=128, num_hidden_layers=6)
    out = compress(model, "replaceme", calibration_ids=ids(), num_layers=2)
    plan = plan_of(out.config)
    (start, end), = out.config.flatten["method_params"]["removed_blocks"]
    k = [g[0] for g in plan.groups].index(start - 1)
    assert teacher_layers(plan)[k] == end - 1 and k in changed_layers(plan, model.config)
