"""Pure weight operations: norm folding, head/channel selection, concatenation into a wide layer."""

from __future__ import annotations

import torch

from flatten_hf.adapters import adapter_for, head_dim_of, new_decoder_layer
from flatten_hf.assemble import layer_state
from flatten_hf.calibration import LayerwiseRunner
from flatten_hf.ops.folding import fold_norms
from flatten_hf.ops.layer_weights import concat, select

from .tiny import tiny_model


def test_folded_norms_give_identical_logits(arch):
    # in float64, so that the check is about the algebra and not about float32 rounding, which differs
    # between CPUs (1.5e-5 on an AMD EPYC against 1e-5 allowed in float32)
    model = tiny_model(arch).double()
    ids = torch.randint(3, 96, (2, 12))
    before = model(ids).logits
    with torch.no_grad():
        for layer in model.model.layers:
            layer.load_state_dict(fold_norms(layer.state_dict(), adapter_for(model.config).roles))
    assert all(torch.all(l.input_layernorm.weight == 1) for l in model.model.layers)
    torch.testing.assert_close(model(ids).logits, before, rtol=1e-10, atol=1e-10)


def test_selecting_everything_is_the_identity(arch):
    model = tiny_model(arch)
    state = layer_state(model, 1)
    out = select(state, adapter_for(model.config).roles, list(range(4)), list(range(2)), list(range(48)), head_dim_of(model.config))
    assert all(torch.equal(out[k], state[k]) for k in state)


def test_selection_permutes_heads_with_their_rows(arch):
    model = tiny_model(arch)
    state = layer_state(model, 0)
    out = select(state, adapter_for(model.config).roles, [3, 2], [1], [5, 0], head_dim=16)
    torch.testing.assert_close(out["self_attn.q_proj.weight"], state["self_attn.q_proj.weight"][list(range(48, 64)) + list(range(32, 48))])
    torch.testing.assert_close(out["self_attn.o_proj.weight"], state["self_attn.o_proj.weight"][:, list(range(48, 64)) + list(range(32, 48))])
    torch.testing.assert_close(out["self_attn.k_proj.weight"], state["self_attn.k_proj.weight"][16:32])
    torch.testing.assert_close(out["mlp.down_proj.weight"], state["mlp.down_proj.weight"][:, [5, 0]])


@torch.no_grad()
def test_wide_layer_equals_sum_of_member_branches(arch):
    """Flattening identity: attention of all members in parallel, then their MLPs in parallel."""
    model = tiny_model(arch)
    roles = adapter_for(model.config).roles
    members = [fold_norms(layer_state(model, i), roles) for i in (1, 2)]
    wide = concat(members, roles)
    x = torch.randn(2, 10, 64)
    kwargs = LayerwiseRunner(model, torch.randint(3, 96, (2, 10)), batch_size=2).layer_kwargs[0]["full_attention"]
    layers = []
    for state in members:
        layer = new_decoder_layer(model.config, 0, 4, 2, 48)
        layer.load_state_dict(state)
        layers.append(layer)
    # reference: x1 = x + sum_m attn_m(norm(x)); x2 = x1 + sum_m mlp_m(norm(x1))
    normed = layers[0].input_layernorm(x)
    x1 = x + sum(l.self_attn(normed, **{k: v for k, v in kwargs.items() if k != "hidden_states"})[0] for l in layers)
    normed1 = layers[0].post_attention_layernorm(x1)
    expected = x1 + sum(l.mlp(normed1) for l in layers)
    wide_layer = new_decoder_layer(model.config, 0, 8, 4, 96, flattened=True)  # Qwen3: per-head q/k norms
    wide_layer.load_state_dict(wide)
    torch.testing.assert_close(wide_layer(x, **kwargs), expected, rtol=1e-5, atol=1e-5)


def test_refit_on_vanishing_inputs_keeps_the_original_weights():
    from flatten_hf.ops.compensation import least_squares_refit

    w = torch.randn(6, 3, dtype=torch.float64)
    refit = least_squares_refit(torch.zeros(6, 6), torch.zeros(6, 3), w, 0.0)
    assert torch.allclose(refit, w, atol=1e-9)
