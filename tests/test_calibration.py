"""The layer-wise runner reproduces the model's own hidden states, layer by layer."""

from __future__ import annotations

import torch

from flatten_hf.calibration import LayerwiseRunner, layer_type_of

from .tiny import tiny_model


@torch.no_grad()
def test_layerwise_runner_matches_full_forward(arch):
    model = tiny_model(arch, attn="eager")
    ids = torch.randint(3, 96, (5, 12))  # 5 sequences in batches of 2: a short last batch too
    reference = model(ids, output_hidden_states=True).hidden_states
    runner = LayerwiseRunner(model, ids, batch_size=2)
    torch.testing.assert_close(torch.cat(runner.hidden), reference[0])
    for i, layer in enumerate(model.model.layers):
        runner.advance(runner.run(layer, layer_type_of(model.config, i)))
        if i < len(model.model.layers) - 1:  # HF's last hidden state is after the final norm
            torch.testing.assert_close(torch.cat(runner.hidden), reference[i + 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.model.norm(torch.cat(runner.hidden)), reference[-1], rtol=1e-5, atol=1e-5)


def test_qwen2_sliding_layers_get_their_own_mask():
    model = tiny_model("qwen2", attn="eager")
    runner = LayerwiseRunner(model, torch.randint(3, 96, (2, 12)), batch_size=2)
    kinds = runner.layer_kwargs[0]
    assert set(kinds) == {"full_attention", "sliding_attention"}
    full, sliding = kinds["full_attention"]["attention_mask"], kinds["sliding_attention"]["attention_mask"]
    assert not torch.equal(full, sliding)  # window 6 < 12 tokens: the sliding mask hides more
