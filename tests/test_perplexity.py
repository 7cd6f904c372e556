"""Perplexity against a hand computation on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from flatten_hf.perplexity import perplexity, windows

from .tiny import tiny_model


def test_windows_are_non_overlapping_and_drop_the_remainder():
    w = windows(torch.arange(23), 5)
    assert w.tolist() == [list(range(i, i + 5)) for i in range(0, 20, 5)]
    assert windows(torch.arange(23), 5, max_windows=2).shape == (2, 5)
    with pytest.raises(ValueError, match="fewer than one window"):
        windows(torch.arange(3), 5)


@torch.no_grad()
def test_perplexity_matches_hand_computation():
    model = tiny_model("llama")
    ids = torch.randint(3, 96, (43,))
    nll, count = 0.0, 0
    for w in range(4):  # 43 tokens -> four windows of 10, 3 tokens dropped
        window = ids[w * 10 : (w + 1) * 10]
        logp = torch.log_softmax(model(window[None]).logits[0], -1)
        for t in range(9):
            nll -= logp[t, window[t + 1]].item()
            count += 1
    assert perplexity(model, ids, seq_len=10, batch_size=3) == pytest.approx(math.exp(nll / count), rel=1e-5)
