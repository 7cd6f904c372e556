"""Building a compressed model from a plan: the plan alone fixes the architecture."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from flatten_hf.architecture import ARCHITECTURES
from flatten_hf.assemble import assemble, plan_weights, whole_layer
from flatten_hf.plan import MergePlan, SourceSlice

from .tiny import tiny_model


def test_identity_plan_reproduces_the_model_as_a_stock_class(arch):
    model = tiny_model(arch)
    plan = MergePlan("identity", 4, [[whole_layer(model.config, i)] for i in range(4)])
    out = assemble(model, plan, plan_weights(model, plan))
    assert type(out) in (LlamaForCausalLM, Qwen2ForCausalLM)
    assert out.config.flatten["merge_plan"] == [[0], [1], [2], [3]]
    ids = torch.randint(3, 96, (2, 9))
    assert torch.equal(out(ids).logits, model(ids).logits)


def test_uniform_plan_can_be_kept_in_flattened_classes(arch):
    model = tiny_model(arch)
    plan = MergePlan("identity", 4, [[whole_layer(model.config, i)] for i in range(4)])
    out = assemble(model, plan, plan_weights(model, plan), stock_if_uniform=False)
    assert type(out) is ARCHITECTURES[arch].flatten_model_class
    ids = torch.randint(3, 96, (2, 9))
    assert torch.equal(out(ids).logits, model(ids).logits)


def test_removing_a_layer_equals_skipping_it(arch):
    model = tiny_model(arch, attn="eager")
    plan = MergePlan("drop", 4, [[whole_layer(model.config, i)] for i in (0, 1, 3)])
    out = assemble(model, plan, plan_weights(model, plan))
    assert out.config.num_hidden_layers == 3
    if arch == "qwen2":  # layer 3 was a sliding-window layer and stays one
        assert out.config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    del model.model.layers[2]
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = 3
    model.config.layer_types = out.config.layer_types if arch == "qwen2" else None
    ids = torch.randint(3, 96, (2, 9))
    torch.testing.assert_close(out(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_grouped_plan_builds_a_wide_flattened_layer(arch):
    model = tiny_model(arch)
    plan = MergePlan("flatten", 4, [[whole_layer(model.config, 0)],
                                    [whole_layer(model.config, 1), SourceSlice(2, [2, 3], [1], list(range(10)))],
                                    [whole_layer(model.config, 3)]])
    out = assemble(model, plan, plan_weights(model, plan))
    assert type(out) is ARCHITECTURES[arch].flatten_model_class
    assert out.config.num_attention_heads_per_layer == [4, 6, 4]
    assert out.config.num_key_value_heads_per_layer == [2, 3, 2]
    assert out.config.intermediate_size_per_layer == [48, 58, 48]
    assert torch.isfinite(out(torch.randint(3, 96, (1, 6))).logits).all()
