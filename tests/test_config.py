"""FlattenConfig: per-layer fields, merge-plan consistency, clear errors on bad input."""

import pytest
from flatten_hf.modeling.configuration_flatten import decode_indices, encode_indices

from flatten_hf import FlattenLlamaConfig, FlattenQwen2Config, MergePlan, SourceSlice

DENSE = dict(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16)


@pytest.mark.parametrize("indices", [[], [3], [0, 1, 2, 5, 7, 8], [9, 2, 3, 4, 0], list(range(100))])
def test_index_encoding_roundtrip_keeps_order(indices):
    assert decode_indices(encode_indices(indices)) == indices


def test_index_encoding_is_compact():
    assert encode_indices([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert encode_indices(list(range(1536))) == "0-1535"


def test_defaults_are_dense_values():
    c = FlattenLlamaConfig(**DENSE)
    assert c.num_attention_heads_per_layer == [4, 4, 4]
    assert c.num_key_value_heads_per_layer == [2, 2, 2]
    assert c.intermediate_size_per_layer == [48, 48, 48]
    assert c.is_uniform


def test_layer_view_overrides_sizes_only():
    c = FlattenLlamaConfig(**DENSE, num_attention_heads_per_layer=[4, 8, 2], num_key_value_heads_per_layer=[2, 4, 1],
                           intermediate_size_per_layer=[48, 10, 96])
    v = c.layer_config(1)
    assert (v.num_attention_heads, v.num_key_value_heads, v.intermediate_size) == (8, 4, 10)
    assert (c.num_attention_heads, c.intermediate_size) == (4, 48)  # globals keep the dense values
    assert not c.is_uniform


def test_qwen2_gets_explicit_head_dim():
    fields = {k: v for k, v in DENSE.items() if k != "head_dim"}
    c = FlattenQwen2Config(**fields, num_attention_heads_per_layer=[4, 2, 2], num_key_value_heads_per_layer=[2, 1, 1])
    assert c.head_dim == 16 and c.layer_config(1).head_dim == 16
    assert c.to_dict()["head_dim"] == 16


@pytest.mark.parametrize("overrides, message", [
    ({"num_attention_heads_per_layer": [4, 4]}, "num_attention_heads_per_layer must be a list with one entry per decoder layer"),
    ({"intermediate_size_per_layer": [48, 0, 48]}, r"intermediate_size_per_layer\[1\] must be a positive integer"),
    ({"num_attention_heads_per_layer": [4, 5, 4]}, r"Layer 1: num_attention_heads_per_layer\[1\]=5 is not divisible"),
    ({"num_key_value_heads_per_layer": [2, 2, -1]}, r"num_key_value_heads_per_layer\[2\] must be a positive integer"),
])
def test_bad_per_layer_config_names_field_and_layer(overrides, message):
    with pytest.raises(ValueError, match=message):
        FlattenLlamaConfig(**DENSE, **overrides)


def _plan(layers):
    return MergePlan(method="test", source_num_hidden_layers=4, layers=layers, base_model="x", base_model_type="llama")


def test_per_layer_sizes_are_derived_from_the_plan():
    plan = _plan([[SourceSlice(0, [0, 1, 2, 3], [0, 1], list(range(48)))],
                  [SourceSlice(1, [0, 1], [0], [1, 2]), SourceSlice(2, [2, 3, 0, 1], [1, 0], [5])],
                  [SourceSlice(3, [2, 3], [1], list(range(40)))]])
    c = FlattenLlamaConfig(**DENSE, flatten=plan.to_dict())
    assert c.num_attention_heads_per_layer == [4, 6, 2]
    assert c.num_key_value_heads_per_layer == [2, 3, 1]
    assert c.intermediate_size_per_layer == [48, 3, 40]
    assert MergePlan.from_dict(c.to_dict()["flatten"]) == plan


def test_plan_disagreeing_with_sizes_is_rejected():
    plan = _plan([[SourceSlice(i, [0, 1, 2, 3], [0, 1], list(range(48)))] for i in range(3)])
    with pytest.raises(ValueError, match=r"intermediate_size_per_layer\[2\]=40 disagrees with the merge plan"):
        FlattenLlamaConfig(**DENSE, flatten=plan.to_dict(), intermediate_size_per_layer=[48, 48, 40])


def test_plan_with_misaligned_gqa_groups_is_rejected():
    # 4 query heads on 2 key/value heads overall, but layer 1 brings 3 query heads for its one group
    plan = _plan([[SourceSlice(0, [0, 1, 2, 3], [0, 1], [0])], [SourceSlice(1, [0, 1, 2], [0], [0]),
                  SourceSlice(2, [0], [0], [0])], [SourceSlice(3, [0, 1], [0], [0])]])
    with pytest.raises(ValueError, match="source layer 1: keeps 3 query heads for 1 key/value heads"):
        FlattenLlamaConfig(**DENSE, flatten=plan.to_dict())


def test_plan_with_wrong_layer_count_is_rejected():
    plan = _plan([[SourceSlice(0, [0, 1, 2, 3], [0, 1], list(range(48)))]])
    with pytest.raises(ValueError, match=r"flatten.layers must list one entry per decoder layer \(num_hidden_layers=3\), got 1"):
        FlattenLlamaConfig(**DENSE, flatten=plan.to_dict(), num_attention_heads_per_layer=[4] * 3,
                           num_key_value_heads_per_layer=[2] * 3, intermediate_size_per_layer=[48] * 3)


def test_unknown_plan_version_is_rejected():
    d = _plan([]).to_dict()
    d["format_version"] = 99
    with pytest.raises(ValueError, match="Unsupported merge-plan format_version 99"):
        MergePlan.from_dict(d)
