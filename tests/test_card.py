"""Model cards rendered from a checkpoint folder: Hub metadata, merge-plan table, reproduce command."""

from __future__ import annotations

import json
import shlex

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

import flatten_hf
from flatten_hf.card import check_card_metadata, count_parameters, render_card
from flatten_hf.cli import build_parser, main

from .tiny import tiny_model

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def compressed_folder(tmp_path, arch="llama", **options):
    """A tiny model compressed by FlattenGPT and saved (card included) as `compress` does."""
    model = tiny_model(arch)
    ids = torch.randint(3, 90, (4, 32), generator=torch.Generator().manual_seed(0))
    out = tmp_path / "tiny-flattengpt"
    # the ids stand in for Wikipedia windows; the calibration config says so, as `compress` on text would
    compressed = flatten_hf.compress(model, "flattengpt", calibration_ids=ids, num_layers=1, base_model=BASE,
                                     calibration=flatten_hf.CalibrationConfig("wikipedia", 4, 32), **options)
    flatten_hf.save_compressed(compressed, out, card_writer=flatten_hf.write_card)
    return model, compressed, out


def metadata_of(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def test_save_writes_a_card_with_hub_metadata_and_the_plan(tmp_path):
    model, compressed, out = compressed_folder(tmp_path, width_policy="global", stock_if_uniform=False)
    text = (out / "README.md").read_text()
    meta = metadata_of(text)
    assert meta["base_model"] == BASE and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"pruned", "depth-compression", "flattengpt", "llama", "custom_code"} <= set(meta["tags"])
    assert meta["datasets"] == ["google/boolq"]
    assert "**4 → 3 decoder layers**" in text
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count_parameters(out) == count(compressed)
    # One table row per new layer, naming the original layers it came from.
    groups = compressed.config.flatten["merge_plan"]
    for i, group in enumerate(groups):
        assert f"| {i} | {' + '.join(map(str, group))} |" in text
    assert "trust_remote_code=True" in text  # per-layer widths ship custom code


@pytest.mark.parametrize("options, says", [
    ({}, "chosen by the similarity of their hidden states"),
    ({"fixed_groups": "1-2"}, "The runs of adjacent layers 1-2, given by hand"),
    ({"width_policy": "split"}, "split between heads and channels as each block's refit error said best"),
    ({"prune": False}, "kept whole: fewer, wider layers"),
])
def test_card_describes_what_the_plan_options_did(tmp_path, options, says):
    _, _, out = compressed_folder(tmp_path, **options)
    assert says in (out / "README.md").read_text()


def test_card_parameter_counts_reconstruct_the_base_model(tmp_path):
    model, compressed, out = compressed_folder(tmp_path)
    text = (out / "README.md").read_text()
    base = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in compressed.parameters())
    assert f"{base / 1e6:.1f}M → {after / 1e6:.1f}M parameters ({after / base:.1%}" in text
    assert "stock `LlamaForCausalLM`" in text and "trust_remote_code" not in text


def test_reproduce_command_parses_back_to_the_same_settings(tmp_path):
    _, compressed, out = compressed_folder(tmp_path, width_policy="global", ridge_factor=0.5)
    text = (out / "README.md").read_text()
    command = next(line for line in text.splitlines() if line.startswith("flatten-hf compress"))
    args = build_parser().parse_args(shlex.split(command)[1:])
    calib = compressed.config.flatten["method_params"]["calibration"]
    assert args.model == "smollm2-135m" and args.method == "flattengpt" and args.num_layers == 1
    assert args.width_policy == "global" and args.ridge_factor == 0.5 and not hasattr(args, "similarity")
    assert (args.calib_samples, args.seq_len, args.seed) == (calib["num_samples"], calib["seq_len"], calib["seed"])


def test_eval_results_become_model_index(tmp_path):
    _, _, out = compressed_folder(tmp_path)
    (out / "eval_results.json").write_text(json.dumps({
        "protocol": "perplexity, 512-token windows",
        "dataset": {"type": "google/boolq", "name": "Wikipedia passages", "split": "validation"},
        "quality_metrics": ["perplexity"],
        "models": [
            {"name": BASE, "role": "base", "layers": 4, "parameters": 100000, "metrics": {"perplexity": 20.5, "prefill_ms": 9.0}},
            {"name": "tiny-flattengpt", "role": "compressed", "layers": 3, "parameters": 80000,
             "metrics": {"perplexity": 24.25, "prefill_ms": 7.0}},
        ],
    }))
    assert main(["card", str(out), "--repo-id", "someone/tiny-flattengpt"]) == 0
    text = (out / "README.md").read_text()
    name, results = model_index_to_eval_results(metadata_of(text)["model-index"])
    assert name == "tiny-flattengpt"
    assert [(r.metric_type, r.metric_value, r.dataset_type) for r in results] == [("perplexity", 24.25, "google/boolq")]
    assert "| tiny-flattengpt | 3 | 0.1M | 24.25 | 7.00 |" in text
    assert 'from_pretrained("someone/tiny-flattengpt"' in text


def test_metadata_check_rejects_a_card_without_required_fields(tmp_path):
    _, _, out = compressed_folder(tmp_path)
    card = render_card(out)
    check_card_metadata(card)
    broken = ModelCard(str(card).replace("pipeline_tag: text-generation\n", ""))
    with pytest.raises(ValueError, match="pipeline_tag"):
        check_card_metadata(broken)


def test_no_card_flag_and_folder_without_plan(tmp_path, capsys):
    tiny_model("llama").save_pretrained(tmp_path / "plain")
    assert main(["card", str(tmp_path / "plain")]) == 2
    assert "has no merge plan" in capsys.readouterr().err
    assert not (tmp_path / "plain" / "README.md").exists()


def test_recovered_come_checkpoint_card_describes_both_steps(tmp_path):
    teacher = tiny_model("llama", num_hidden_layers=6)
    ids = torch.randint(3, 90, (4 * 3, 16), generator=torch.Generator().manual_seed(0))
    compressed = flatten_hf.compress(teacher, "come", calibration_ids=ids[:4], num_layers=2, norms="average",
                                     base_model=BASE)
    config = flatten_hf.RecoveryConfig(steps=3, batch_size=4, seq_len=16, learning_rate=2e-4, layers="all")
    recovered = flatten_hf.recover(compressed, teacher, input_ids=ids, config=config)
    out = tmp_path / "tiny-come-recovered"
    flatten_hf.save_compressed(recovered, out, card_writer=flatten_hf.write_card)
    text = (out / "README.md").read_text()
    assert "**CoMe**" in text and "arXiv:2510.15304" in text and "`norms=average`" in text
    assert "- **Recovery**: hierarchical distillation from the base model" in text
    assert "3 steps of 4 x 16 tokens (192 tokens" in text
    lines = text.splitlines()
    compress_cmd = next(line for line in lines if line.startswith("flatten-hf compress"))
    recover_cmd = next(line for line in lines if line.startswith("flatten-hf recover"))
    args = build_parser().parse_args(shlex.split(compress_cmd)[1:])
    assert args.method == "come" and args.norms == "average" and not hasattr(args, "pair_score")
    rec = build_parser().parse_args(shlex.split(recover_cmd)[1:])
    assert rec.model == args.out and rec.out == "out/tiny-come-recovered"
    assert (rec.steps, rec.batch_size, rec.seq_len, rec.learning_rate, rec.layers) == (3, 4, 16, 2e-4, "all")
    assert (rec.train, rec.lora_r, rec.seed) == ("lora", 8, 0)  # defaults are left out of the command
