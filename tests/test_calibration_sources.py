"""Calibration sources: samples from the model itself ('self'), '+' mixtures, and the fiction text domain."""

from __future__ import annotations

import pytest
import torch

from flatten_hf.compression import CalibrationConfig, calibration_data
from flatten_hf.sampling import sample_ids

from .tiny import tiny_model


def test_samples_are_full_length_seeded_and_leave_the_global_rng_alone():
    model = tiny_model("llama")
    state = torch.random.get_rng_state()
    a = sample_ids(model, None, 5, 12, seed=3, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.shape == (5, 12) and torch.all(a[:, 0] == model.config.bos_token_id)
    assert torch.equal(a, sample_ids(model, None, 5, 12, seed=3, batch_size=2))
    assert not torch.equal(a, sample_ids(model, None, 5, 12, seed=4, batch_size=2))


def test_samples_follow_the_model():
    """A model whose next-token distribution is (numerically) all on token 7 samples nothing else."""
    model = tiny_model("llama")
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-100.0)
        head.bias[7] = 100.0
    model.lm_head = head
    ids = sample_ids(model, None, 2, 10)
    assert torch.all(ids[:, 1:] == 7)


def test_self_calibration_compresses_without_any_text():
    import flatten_hf

    model = tiny_model("qwen2")
    ids = calibration_data(model, None, CalibrationConfig("self", num_samples=4, seq_len=16))
    out = flatten_hf.compress(model, "shortgpt", calibration_ids=ids, num_layers=1)
    assert out.config.num_hidden_layers == 3


def test_too_few_samples_for_a_mixture_is_explained():
    with pytest.raises(ValueError, match="fewer than the 2 parts"):
        calibration_data(tiny_model("llama"), None, CalibrationConfig("self+self", num_samples=1, seq_len=8))


@pytest.mark.slow
def test_mixtures_interleave_their_parts_and_the_plan_records_the_source(smollm2, tmp_path):
    from flatten_hf.data import calibration_ids, load_text_source

    model, tokenizer = smollm2
    fiction = load_text_source("lambada")
    assert len(fiction.evaluation) > 1000 and not set(fiction.calibration) & set(fiction.evaluation)
    mixed = calibration_data(model, tokenizer, CalibrationConfig("wikipedia+lambada", num_samples=5, seq_len=32))
    wiki = calibration_ids(tokenizer, "wikipedia", 3, 32)
    novels = calibration_ids(tokenizer, "lambada", 2, 32)
    assert torch.equal(mixed, torch.stack([wiki[0], novels[0], wiki[1], novels[1], wiki[2]]))
