"""Streamed compression (`compress_checkpoint`, the CLI's default) writes the checkpoint that the in-memory path
writes, tensor for tensor, for every method and architecture, while holding only a few layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

import flatten_hf
from flatten_hf.assets import require_asset
from flatten_hf.cli import main
from flatten_hf.shard_writer import ShardWriter
from flatten_hf.streaming import CheckpointReader, StreamedLayers, load_streamed_model

from .tiny import tiny_model

CALIBRATION = flatten_hf.CalibrationConfig(batch_size=2)
METHODS = [("shortgpt", {}), ("flattengpt", {}), ("flattengpt", {"width_policy": "global"}),
           ("flattengpt", {"target": "dense", "map_candidate": True}), ("flattengpt", {"num_layers": 2, "remove_fraction": 0.5}),
           ("flattengpt", {"num_layers": 2, "remove_fraction": 0.5, "removal_score": "loss"}),
           ("replaceme", {}), ("come", {})]


def ids() -> torch.Tensor:
    return torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(0))


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(folder)
    return reader.read(reader.names(), torch.float32)


def assert_same_checkpoint(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    code = sorted(p.name for p in a.glob("*.py"))
    assert code == sorted(p.name for p in b.glob("*.py"))
    assert not list(b.glob(".*")), "scratch files left in the output"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(require_asset("smollm2-135m"))


@pytest.mark.parametrize("method, options", METHODS, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "default")
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_streamed_checkpoint_equals_the_in_memory_one(arch, method, options, tmp_path, tokenizer):
    model = tiny_model(arch, tie_word_embeddings=arch == "qwen2")
    model.save_pretrained(tmp_path / "dense")
    options = {"num_layers": 1, **options}
    in_memory = flatten_hf.compress(model, method, calibration_ids=ids(), calibration=CALIBRATION,
                                    base_model=str(tmp_path / "dense"), **options)
    flatten_hf.save_compressed(in_memory, tmp_path / "a", tokenizer)
    flatten_hf.compress_checkpoint(tmp_path / "dense", method, out_dir=tmp_path / "b", tokenizer=tokenizer,
                                   calibration_ids=ids(), calibration=CALIBRATION, max_shard_size="40KB",
                                   **options)
    assert_same_checkpoint(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "model.safetensors.index.json").is_file()  # sharded by max_shard_size
    reloaded = flatten_hf.load_model(str(tmp_path / "b"))[0]
    x = ids()[:1]
    assert torch.equal(reloaded(x).logits, in_memory(x).logits)


def test_a_compressed_per_layer_checkpoint_streams_too(tmp_path, tokenizer):
    """Compressing twice: the Flattened input's per-layer widths are read from its config."""
    model = tiny_model("llama", num_hidden_layers=6)
    first = flatten_hf.compress(model, "flattengpt", calibration_ids=ids(), num_layers=1, width_policy="global")
    flatten_hf.save_compressed(first, tmp_path / "first", tokenizer)
    first = flatten_hf.load_model(str(tmp_path / "first"))[0]
    second = flatten_hf.compress(first, "shortgpt", calibration_ids=ids(), num_layers=1,
                                 base_model=str(tmp_path / "first"))
    flatten_hf.save_compressed(second, tmp_path / "a", tokenizer)
    flatten_hf.compress_checkpoint(tmp_path / "first", "shortgpt", out_dir=tmp_path / "b", calibration_ids=ids(),
                                   num_layers=1)
    assert_same_checkpoint(tmp_path / "a", tmp_path / "b")


def test_streamed_layers_are_read_on_demand_and_at_most_resident_are_kept(tmp_path):
    tiny_model("llama", num_hidden_layers=6).save_pretrained(tmp_path / "dense")
    model = load_streamed_model(tmp_path / "dense", resident=2)
    layers = model.model.layers
    assert isinstance(layers, StreamedLayers) and len(layers) == 6
    assert not any(k.startswith("model.layers.") for k in model.state_dict())  # only what is outside the layers
    assert layers.reads == 0
    first = layers[0]
    assert layers[0] is first and layers.reads == 1  # cached
    for i in range(1, 6):
        layers[i]
    assert layers.reads == 6 and len(layers._cache) == 2
    layers[0]
    assert layers.reads == 7  # evicted, read again
    dense = tiny_model("llama", num_hidden_layers=6)
    assert all(torch.equal(a, b) for a, b in zip(layers[3].state_dict().values(), dense.model.layers[3].state_dict().values()))


def test_an_interrupted_streamed_run_leaves_nothing(tmp_path, tokenizer):
    """A NaN found in layer 2 (after layers 0 and 1 were spilled): a one-line error, no output, no scratch."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match=r"NaN or infinite weights \(model.layers.2.mlp.down_proj.weight\)"):
        flatten_hf.compress_checkpoint(tmp_path / "dense", "replaceme", out_dir=tmp_path / "out",
                                       calibration_ids=ids(), num_layers=1, tokenizer=tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]


def test_streaming_refuses_self_sampling_and_non_safetensors_weights(tmp_path, tokenizer):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match="samples text from the whole model"):
        flatten_hf.compress_checkpoint(tmp_path / "dense", "shortgpt", out_dir=tmp_path / "out", num_layers=1,
                                       calibration=flatten_hf.CalibrationConfig(source="wikipedia+self"))
    model.config.save_pretrained(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # a legacy checkpoint
    with pytest.raises(ValueError, match="no safetensors weights"):
        flatten_hf.compress_checkpoint(tmp_path / "bin", "shortgpt", out_dir=tmp_path / "out", num_layers=1,
                                       tokenizer=tokenizer, calibration_ids=ids())
    assert not (tmp_path / "out").exists()


def test_cli_streams_by_default_and_matches_in_memory(tmp_path, tokenizer, capsys):
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    calib = ["--calib-samples", "4", "--seq-len", "32", "--batch-size", "2"]
    for out, extra in (("streamed", []), ("in-memory", ["--in-memory"])):
        assert main(["compress", str(tmp_path / "dense"), "--method", "flattengpt", "--num-layers", "1", "--out",
                     str(tmp_path / out), *calib, *extra]) == 0
        assert f"({out.replace('-', ' ')})" in capsys.readouterr().out
    assert_same_checkpoint(tmp_path / "in-memory", tmp_path / "streamed")
    assert (tmp_path / "streamed" / "README.md").is_file() and (tmp_path / "streamed" / "tokenizer.json").is_file()


def test_shard_writer_respects_the_size_and_names_shards_like_transformers(tmp_path):
    writer = ShardWriter(tmp_path, max_shard_size=1000, flush_bytes=600)
    for i in range(5):
        writer.add(f"t{i}", torch.full((100,), float(i)))  # 400 bytes each
        writer.boundary()
    shards = writer.close()
    assert [p.name for p in shards] == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    assert all(p.stat().st_size < 1000 + 200 for p in shards)  # data within the limit (plus a small header)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 2000 and len(index["weight_map"]) == 5
    with safe_open(tmp_path / index["weight_map"]["t3"], "pt") as f:
        assert torch.equal(f.get_tensor("t3"), torch.full((100,), 3.0))
    one = ShardWriter(tmp_path / "one")
    (tmp_path / "one").mkdir()
    one.add("x", torch.ones(3))
    assert [p.name for p in one.close()] == ["model.safetensors"]
    assert not (tmp_path / "one" / "model.safetensors.index.json").exists()


def test_device_auto_loads_with_accelerate_device_map(tmp_path, tokenizer, capsys):
    """`eval`, `bench` and `ppl --device auto`: accelerate places the layers (here all on the CPU), same logits."""
    model = tiny_model("llama", vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    spread, _ = flatten_hf.load_model(str(tmp_path / "dense"), device="auto")  # one device here: no hf_device_map
    x = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(spread(x).logits, model(x).logits)
    assert main(["ppl", str(tmp_path / "dense"), "--device", "auto", "--max-windows", "1", "--seq-len", "32"]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_save_dtype_matches_casting_the_in_memory_result(tmp_path, tokenizer):
    """Computed in float32, saved in bfloat16: the spilled layers are cast once, as `.to(bfloat16)` would."""
    model = tiny_model("qwen3")
    model.save_pretrained(tmp_path / "dense")
    in_memory = flatten_hf.compress(model, "flattengpt", calibration_ids=ids(), num_layers=1,
                                    base_model=str(tmp_path / "dense"))
    flatten_hf.save_compressed(in_memory.to(torch.bfloat16), tmp_path / "a", tokenizer)
    flatten_hf.compress_checkpoint(tmp_path / "dense", "flattengpt", out_dir=tmp_path / "b", tokenizer=tokenizer,
                                   calibration_ids=ids(), num_layers=1, save_dtype="bfloat16")
    assert_same_checkpoint(tmp_path / "a", tmp_path / "b")
    with safe_open(tmp_path / "b" / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.layers.0.mlp.down_proj.weight").dtype == torch.bfloat16
