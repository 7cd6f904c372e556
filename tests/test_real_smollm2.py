"""End to end on the real SmolLM2-135M weights: compress, save, reload, measure (slow)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import flatten_hf
from flatten_hf.cli import main
from flatten_hf.data import evaluation_ids

from .test_modeling import load_in_clean_process

pytestmark = pytest.mark.slow
CALIB = ["--calib-samples", "16", "--seq-len", "256"]


@pytest.fixture(scope="module")
def dense_ppl(smollm2):
    model, tokenizer = smollm2
    return flatten_hf.perplexity(model, evaluation_ids(tokenizer), seq_len=512, max_windows=16)


def test_dense_smollm2_is_a_real_pretrained_model(dense_ppl):
    assert 10 < dense_ppl < 35  # about 20 on Wikipedia passages; a random model is in the tens of thousands


def test_shortgpt_cli_roundtrip_through_auto_classes(smollm2, dense_ppl, tmp_path):
    model, tokenizer = smollm2
    out = tmp_path / "shortgpt"
    assert main(["compress", "--method", "shortgpt", "--ratio", "0.2", "--out", str(out), *CALIB]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 24
    plan = config["flatten"]
    assert plan["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and plan["source_num_hidden_layers"] == 30
    assert len(plan["method_params"]["removed_layers"]) == 6
    assert (out / "tokenizer.json").exists()

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(reloaded) is LlamaForCausalLM
    ppl = flatten_hf.perplexity(reloaded, evaluation_ids(tokenizer), seq_len=512, max_windows=16)
    assert math.isfinite(ppl) and dense_ppl < ppl < 4 * dense_ppl

    ids = torch.tensor([tokenizer("The capital of France is").input_ids])
    got = load_in_clean_process(out, ids, tmp_path, remote=False)  # stock checkpoint: no custom code at all
    assert got["cls"] == "transformers.models.llama.modeling_llama.LlamaForCausalLM"
    torch.testing.assert_close(got["logits"], reloaded(ids).logits)


def test_flattened_classes_checkpoint_loads_with_remote_code(smollm2, tmp_path):
    model, tokenizer = smollm2
    out = tmp_path / "flattened"
    assert main(["compress", "--num-layers", "3", "--flattened-classes", "--save-dtype", "bfloat16", "--out", str(out),
                 *CALIB]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # transformers 5 loads the saved dtype by default
    assert type(reloaded) is flatten_hf.FlattenedLlamaForCausalLM
    # --save-dtype: bfloat16 weights on disk (half the float32 size), recorded in config.json
    assert reloaded.dtype == torch.bfloat16 and reloaded.config.dtype == torch.bfloat16
    ids = torch.tensor([tokenizer("Paris is the capital of").input_ids])
    got = load_in_clean_process(out, ids, tmp_path, remote=True)
    assert got["cls"].endswith("modeling_flatten.FlattenedLlamaForCausalLM")
    torch.testing.assert_close(got["logits"], reloaded(ids).logits)


def test_flattengpt_beats_shortgpt_at_ratio_0_2(smollm2, dense_ppl):
    """The product's reason to exist, on real weights: same depth, same parameter count, lower perplexity."""
    from flatten_hf.data import calibration_ids

    model, tokenizer = smollm2
    ids = calibration_ids(tokenizer, num_samples=32, seq_len=512)
    evaluation = evaluation_ids(tokenizer)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    results = {}
    for method in ("shortgpt", "flattengpt"):
        compressed = flatten_hf.compress(model, method, calibration_ids=ids, ratio=0.2)
        assert compressed.config.num_hidden_layers == 24
        assert count(compressed) == count(model) - 6 * count(model.model.layers[0])  # equal parameter count
        results[method] = flatten_hf.perplexity(compressed, evaluation, seq_len=512, max_windows=16)
    assert dense_ppl < results["flattengpt"] < results["shortgpt"], results


def test_come_then_recover_cli_end_to_end(smollm2, dense_ppl, tmp_path):
    """`compress --method come` then `recover` on the real weights: stock checkpoints, plans recorded,
    the distillation lowers perplexity, and the resumable state is cleaned up."""
    model, tokenizer = smollm2
    come = tmp_path / "come"
    assert main(["compress", "--method", "come", "--ratio", "0.1", "--out", str(come), *CALIB]) == 0
    config = json.loads((come / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 27
    merges = config["flatten"]["method_params"]["merges"]
    assert len(merges) == 3 and all(len(m["layers"]) == 2 for m in merges)
    assert all(sum(m["kv_heads"]) == 3 and sum(m["mlp_channels"]) == 1536 for m in merges)  # the original width
    evaluation = evaluation_ids(tokenizer)
    before = flatten_hf.perplexity(AutoModelForCausalLM.from_pretrained(come), evaluation, seq_len=512, max_windows=16)
    assert dense_ppl < before < 3 * dense_ppl

    recovered = tmp_path / "come-recovered"
    assert main(["recover", str(come), "--out", str(recovered), "--steps", "40", "--batch-size", "2", "--seq-len",
                 "256", "--lr", "1e-3", "--save-steps", "10"]) == 0
    assert not (tmp_path / "come-recovered.recovery-state").exists()
    plan = json.loads((recovered / "config.json").read_text())["flatten"]
    record = plan["method_params"]["recovery"]
    merged_layers = [k for k, group in enumerate(plan["merge_plan"]) if len(group) > 1]
    assert record["trained_layers"] == merged_layers and record["tokens"] == 40 * 2 * 256
    assert plan["merge_plan"] == config["flatten"]["merge_plan"]
    assert "- **Recovery**: hierarchical distillation" in (recovered / "README.md").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(recovered)
    assert type(reloaded) is LlamaForCausalLM
    after = flatten_hf.perplexity(reloaded, evaluation, seq_len=512, max_windows=16)
    assert dense_ppl < after < before, (before, after)
