"""ShortGPT: Block Influence from the model's own hidden states, lowest-BI layers removed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flatten_hf import ShortGPTConfig, compress
from flatten_hf.calibration import LayerwiseRunner
from flatten_hf.methods.common import layers_to_remove
from flatten_hf.methods.shortgpt import block_influences

from .tiny import tiny_model


@torch.no_grad()
def test_block_influence_matches_hidden_states(arch):
    model = tiny_model(arch, attn="eager")
    ids = torch.randint(3, 96, (4, 10))
    hidden = model(ids, output_hidden_states=True).hidden_states
    scores = block_influences(model, LayerwiseRunner(model, ids, batch_size=3))
    for i in range(3):  # the last HF hidden state is after the final norm, so stop before it
        expected = 1 - F.cosine_similarity(hidden[i], hidden[i + 1], dim=-1).mean().item()
        assert scores[i] == pytest.approx(expected, abs=1e-5)


def test_removes_the_lowest_influence_layers(arch):
    model = tiny_model(arch)
    # make layer 2 nearly a no-op: its branches write (almost) nothing to the residual stream
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.mul_(1e-3)
        model.model.layers[2].mlp.down_proj.weight.mul_(1e-3)
    ids = torch.randint(3, 96, (4, 10))
    out = compress(model, ShortGPTConfig(num_layers=1), calibration_ids=ids)
    assert out.config.flatten["merge_plan"] == [[0], [1], [3]]
    assert out.config.flatten["method_params"]["removed_layers"] == [2]
    assert out.config.num_hidden_layers == 3 and model.config.num_hidden_layers == 4


@pytest.mark.parametrize("num_layers, ratio, message", [
    (None, None, "exactly one of"), (2, 0.5, "exactly one of"), (None, 1.0, r"ratio must be in \[0, 1\)"),
    (30, None, "Cannot remove 30 of 30"), (-1, None, "Cannot remove -1 of 30"), (None, 0.01, "rounds to 0 layers"),
])
def test_bad_depth_targets_are_explained(num_layers, ratio, message):
    with pytest.raises(ValueError, match=message):
        layers_to_remove(30, num_layers, ratio)


def test_ratio_counts_decoder_layers():
    assert [layers_to_remove(30, None, r) for r in (0.1, 0.2, 0.3)] == [3, 6, 9]
    assert layers_to_remove(30, 0, None) == layers_to_remove(30, None, 0.0) == 0  # nothing removed: a reference


def test_unknown_method_and_missing_tokenizer_are_explained():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        compress(model, "nope", ratio=0.25)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        compress(model, "shortgpt", ratio=0.25)


@pytest.mark.parametrize("method", ["shortgpt", "flattengpt"])
def test_removing_no_layer_rebuilds_the_same_model(arch, method):
    """The reference checkpoint of the drop-in tests: a plan that keeps everything is the base model."""
    model = tiny_model(arch)
    ids = torch.randint(3, 96, (4, 16))
    out = compress(model, method, calibration_ids=ids, num_layers=0, stock_if_uniform=False)
    assert type(out).__name__.startswith("Flattened") and out.config.flatten["merge_plan"] == [[i] for i in range(4)]
    assert torch.equal(out(ids).logits, model(ids).logits)
