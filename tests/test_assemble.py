"""Building a compressed model from a plan: the plan alone fixes the architecture."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

from flatten_hf.adapters import get_adapter
from flatten_hf.assemble import assemble, plan_weights, whole_layer
from flatten_hf.compression import compress
from flatten_hf.plan import MergePlan, SourceSlice

from .tiny import tiny_model


def test_identity_plan_reproduces_the_model_as_a_stock_class(arch):
    model = tiny_model(arch)
    plan = MergePlan("identity", 4, [[whole_layer(model.config, i)] for i in range(4)])
    out = assemble(model, plan, plan_weights(model, plan))
    assert type(out) is get_adapter(arch).stock_model_class
    assert out.config.flatten["merge_plan"] == [[0], [1], [2], [3]]
    ids = torch.randint(3, 96, (2, 9))
    assert torch.equal(out(ids).logits, model(ids).logits)


def test_uniform_plan_can_be_kept_in_flattened_classes(arch):
    model = tiny_model(arch)
    plan = MergePlan("identity", 4, [[whole_layer(model.config, i)] for i in range(4)])
    out = assemble(model, plan, plan_weights(model, plan), stock_if_uniform=False)
    assert type(out) is get_adapter(arch).flatten_model_class
    ids = torch.randint(3, 96, (2, 9))
    assert torch.equal(out(ids).logits, model(ids).logits)


def test_removing_a_layer_equals_skipping_it(arch):
    model = tiny_model(arch, attn="eager")
    plan = MergePlan("drop", 4, [[whole_layer(model.config, i)] for i in (0, 1, 3)])
    out = assemble(model, plan, plan_weights(model, plan))
    assert out.config.num_hidden_layers == 3
    if arch in ("qwen2", "qwen3"):  # layer 3 was a sliding-window layer and stays one
        assert out.config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    del model.model.layers[2]
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = 3
    model.config.layer_types = out.config.layer_types if arch in ("qwen2", "qwen3") else None
    ids = torch.randint(3, 96, (2, 9))
    torch.testing.assert_close(out(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_grouped_plan_builds_a_wide_flattened_layer(arch):
    model = tiny_model(arch)
    plan = MergePlan("flatten", 4, [[whole_layer(model.config, 0)],
                                    [whole_layer(model.config, 1), SourceSlice(2, [2, 3], [1], list(range(10)))],
                                    [whole_layer(model.config, 3)]])
    out = assemble(model, plan, plan_weights(model, plan))
    assert type(out) is get_adapter(arch).flatten_model_class
    assert out.config.num_attention_heads_per_layer == [4, 6, 4]
    assert out.config.num_key_value_heads_per_layer == [2, 3, 2]
    assert out.config.intermediate_size_per_layer == [48, 58, 48]
    assert torch.isfinite(out(torch.randint(3, 96, (1, 6))).logits).all()


def test_stock_classes_hold_mixed_heads_unless_heads_share_a_norm(arch, tmp_path):
    """A layer at the dense widths whose heads come from two layers is stock for every architecture but
    Qwen3, whose stock layer shares one q/k norm vector across its heads; its Flattened class keeps a
    row per head, and the checkpoint round-trips."""
    model = tiny_model(arch)
    cfg = model.config
    plan = MergePlan("mix", 4, [[whole_layer(cfg, 0)],
                                [SourceSlice(1, [0, 1], [0], list(range(48))), SourceSlice(2, [2, 3], [1], [])],
                                [whole_layer(cfg, 3)]])
    out = assemble(model, plan, plan_weights(model, plan))
    adapter = get_adapter(arch)
    assert type(out) is (adapter.flatten_model_class if arch == "qwen3" else adapter.stock_model_class)
    if arch == "qwen3":
        norm = out.model.layers[1].self_attn.q_norm.weight
        members = [model.model.layers[i].self_attn.q_norm.weight for i in (1, 2)]
        assert torch.equal(norm, torch.stack([members[0], members[0], members[1], members[1]]))
    out.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(3, 96, (2, 9))
    assert torch.equal(again(ids).logits, out(ids).logits)


@pytest.mark.parametrize("method", ["shortgpt", "replaceme"])
def test_removal_methods_keep_qwen3_a_stock_checkpoint(method):
    model = tiny_model("qwen3")
    out = compress(model, method, num_layers=1, calibration_ids=torch.randint(3, 90, (4, 16)))
    assert type(out) is Qwen3ForCausalLM and out.config.num_hidden_layers == 3


def test_a_stock_qwen3_checkpoint_whose_plan_mixes_heads_is_refused_before_loading(tmp_path):
    from flatten_hf.checkpoint import load_model

    model = tiny_model("qwen3")
    out = compress(model, "shortgpt", num_layers=1, calibration_ids=torch.randint(3, 90, (4, 16)))
    plan = out.config.flatten
    # claim that layer 1's heads come from two original layers: a stock layer cannot hold their two norms
    plan["layers"][1]["sources"] = [dict(plan["layers"][1]["sources"][0], q_heads="0-1", kv_heads="0"),
                                    dict(plan["layers"][2]["sources"][0], q_heads="2-3", kv_heads="1", mlp_channels="")]
    plan["merge_plan"][1] = [s["layer"] for s in plan["layers"][1]["sources"]]
    out.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"flatten.layers\[1\] takes attention heads from several original layers"):
        load_model(str(tmp_path))
