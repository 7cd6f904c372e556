"""GGUF export through llama.cpp's converter: stock checkpoints as LLaMA / Qwen2, per-layer ones as `deci`.

The exports are run with llama-cpp-python and compared with transformers on the same token ids.
Those tests need a llama.cpp source tree in `LLAMA_CPP_DIR` and llama-cpp-python installed (CI sets
both up, see scripts/setup.sh); without `LLAMA_CPP_DIR` they are skipped, with it they must pass.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoTokenizer

import flatten_hf
from flatten_hf.assets import require_asset
from flatten_hf.cli import main
from flatten_hf.gguf_export import block_size, export_gguf, misaligned_tensors
from flatten_hf.ops.width_allocation import allocate_widths

from .tiny import tiny_model

needs_llama_cpp = pytest.mark.skipif(not os.environ.get("LLAMA_CPP_DIR"),
                                     reason="set LLAMA_CPP_DIR to a llama.cpp source tree (scripts/setup.sh does)")
ARCHS = ("llama", "qwen2")  # the architectures GGUF export supports


# Each architecture's tiny models carry a real tokenizer of that family: llama.cpp's converter recognises a
# tokenizer by how it splits a test text, and transformers rebuilds a qwen2 checkpoint's tokenizer as Qwen2's
# (its pre-tokenizer over SmolLM2's vocabulary would be a tokenizer llama.cpp has never seen).
TOKENIZER_ASSETS = {"llama": "smollm2-135m", "qwen2": "qwen2.5-coder-0.5b"}


def _tiny_checkpoints(tmp_path, arch: str, **compress_args):
    """A tiny model with its family's real tokenizer, compressed by ShortGPT (a stock checkpoint) and by
    FlattenGPT to per-layer widths (a Flattened one)."""
    tokenizer = AutoTokenizer.from_pretrained(require_asset(TOKENIZER_ASSETS[arch]))
    model = tiny_model(arch, vocab_size=len(tokenizer), **({"use_sliding_window": False} if arch == "qwen2" else {}))
    ids = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    stock = flatten_hf.compress(model, "shortgpt", calibration_ids=ids, num_layers=1)
    flatten_hf.save_compressed(stock, tmp_path / "stock", tokenizer)
    per_layer = flatten_hf.compress(model, "flattengpt", calibration_ids=ids, num_layers=2, width_policy="global",
                                    **compress_args)
    flatten_hf.save_compressed(per_layer, tmp_path / "per-layer", tokenizer)
    config = json.loads((tmp_path / "per-layer" / "config.json").read_text())
    assert config["architectures"] == [f"Flattened{type(model).__name__}"], "the fixture must give per-layer widths"
    return tmp_path / "stock", tmp_path / "per-layer"


def test_block_sizes_and_misaligned_tensors():
    config = {"num_hidden_layers": 2, "hidden_size": 576, "num_attention_heads": 9, "head_dim": 64,
              "intermediate_size": 1536, "num_attention_heads_per_layer": [9, 6],
              "intermediate_size_per_layer": [1536, 1500]}
    assert [block_size(t) for t in ("f16", "q8_0", "q4_0", "q4_k_m", "q6_k")] == [1, 32, 32, 256, 256]
    assert misaligned_tensors(config, "f16") == []
    assert [(m.tensor, m.row_length) for m in misaligned_tensors(config, "q8_0")] == [("layers.1.mlp.down_proj", 1500)]
    # SmolLM2's hidden size, 576, is no multiple of 256: no k-quant fits any of its matrices.
    k_quant = [m.tensor for m in misaligned_tensors(config, "q4_k_m")]
    assert k_quant[0] == "every projection reading the hidden state" and "layers.1.mlp.down_proj" in k_quant
    with pytest.raises(ValueError, match="unknown GGUF type"):
        block_size("q3")


def test_width_multiple_rounds_every_kept_width():
    gen = torch.Generator().manual_seed(0)
    kv = [torch.rand(2, generator=gen) for _ in range(3)]
    channels = [torch.rand(100, generator=gen) for _ in range(3)]
    widths = allocate_widths(kv, channels, kv_params=10, channel_params=1, budget=200, channel_multiple=32)
    assert all(ch % 32 == 0 and ch > 0 for _, ch in widths)
    assert sum(10 * k + c for k, c in widths) <= 200
    # With runs of one channel the same budget is spent to within one channel.
    plain = allocate_widths(kv, channels, kv_params=10, channel_params=1, budget=200)
    assert 199 <= sum(10 * k + c for k, c in plain) <= 200


def test_width_multiple_on_a_model_and_its_refusals(tmp_path):
    _, per_layer = _tiny_checkpoints(tmp_path, "llama", width_multiple=16)
    config = json.loads((per_layer / "config.json").read_text())
    assert all(w % 16 == 0 for w in config["intermediate_size_per_layer"])
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="needs width_policy='global'"):
        flatten_hf.compress(model, "flattengpt", calibration_ids=torch.randint(3, 96, (2, 8)), num_layers=1,
                            width_multiple=32)


def test_export_refusals_come_first_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    stock, _ = _tiny_checkpoints(tmp_path, "llama")
    capsys.readouterr()
    cases = [
        (["--out", str(tmp_path / "a.gguf")], "pass --llama-cpp DIR"),
        (["--out", str(tmp_path / "a.bin")], "must name a .gguf file"),
        (["--out", str(tmp_path / "a.gguf"), "--llama-cpp", str(tmp_path)], "is not a llama.cpp source tree"),
    ]
    (tmp_path / "notes.gguf").write_text("my notes")
    cases.append((["--out", str(tmp_path / "notes.gguf"), "--overwrite"], "is not a GGUF file; it is not replaced"))
    for args, message in cases:
        assert main(["export", str(stock), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "notes.gguf").read_text() == "my notes"
    assert not list(tmp_path.glob("*.gguf.*"))  # no scratch left behind
    quantized = tmp_path / "int8"
    assert main(["quantize", str(stock), "--weights", "int8", "--out", str(quantized)]) == 0
    capsys.readouterr()
    assert main(["export", str(quantized), "--out", str(tmp_path / "q.gguf")]) == 2
    assert "quanto-quantized weights" in capsys.readouterr().err
    qwen = tmp_path / "qwen-sliding"
    tiny_model("qwen2").save_pretrained(qwen)  # sliding-window layers, which llama.cpp would ignore
    with pytest.raises(ValueError, match="sliding-window"):
        export_gguf(qwen, tmp_path / "s.gguf", llama_cpp=tmp_path)


@needs_llama_cpp
@pytest.mark.parametrize("arch", ARCHS)
def test_exported_gguf_computes_what_transformers_computes(tmp_path, arch, caplog):
    """f32 GGUF (and f32 KV cache) of a stock and a per-layer (`deci`) checkpoint: logits within 1e-4 of
    transformers' scale, and the same greedy tokens, generated with llama.cpp's KV cache."""
    from flatten_hf.gguf_runtime import gguf_greedy, gguf_logits, load_gguf

    ids = torch.randint(3, 2000, (24,), generator=torch.Generator().manual_seed(1)).tolist()
    stock, per_layer = _tiny_checkpoints(tmp_path, arch)
    for folder in (stock, per_layer):  # llama.cpp's own llama / qwen2 path, and its deci path
        out = tmp_path / f"{folder.name}.gguf"
        assert main(["export", str(folder), "--quantize", "f32", "--out", str(out)]) == 0
        model, _ = flatten_hf.load_model(str(folder))
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0]
            expected = model.generate(torch.tensor([ids[:8]]), max_new_tokens=12, do_sample=False,
                                      eos_token_id=2)[0, 8:].tolist()
        llm = load_gguf(out, n_ctx=64, f32_cache=True)
        logits = gguf_logits(llm, ids)
        assert (logits - reference).abs().max() <= 1e-4 * reference.abs().max(), folder.name
        assert gguf_greedy(llm, ids[:8], 12, eos_token_id=2) == expected, folder.name
        del llm
    # The per-layer widths (48-ish channels) are no multiple of 32: q8_0 says which tensors fall back.
    caplog.clear()
    export_gguf(tmp_path / "per-layer", tmp_path / "q8.gguf", "q8_0")
    assert "--width-multiple 32" in caplog.text and "mlp.down_proj" in caplog.text


@needs_llama_cpp
def test_quantized_types_go_through_llama_cpp_quantizer(tmp_path):
    _, per_layer = _tiny_checkpoints(tmp_path, "llama")
    f16 = export_gguf(per_layer, tmp_path / "f16.gguf", "f16")
    q4 = export_gguf(per_layer, tmp_path / "q4.gguf", "q4_0")
    assert q4.stat().st_size < f16.stat().st_size
    assert sorted(p.name for p in tmp_path.glob("*.gguf*")) == ["f16.gguf", "q4.gguf"]
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_gguf(per_layer, q4, "q4_0")
    export_gguf(per_layer, q4, "q4_0", overwrite=True)


@pytest.mark.slow
@needs_llama_cpp
def test_real_smollm2_exports_generate_like_transformers(smollm2, smollm2_deploy_checkpoints, tmp_path):
    """ShortGPT (stock) and FlattenGPT with global widths (per-layer, `deci`) on real SmolLM2: f16 GGUF,
    the same greedy tokens and perplexity within 0.5% of transformers on two windows of 512."""
    from flatten_hf.data import evaluation_ids
    from flatten_hf.gguf_runtime import gguf_greedy, gguf_perplexity, load_gguf
    from flatten_hf.perplexity import perplexity

    _, tokenizer = smollm2
    ids = evaluation_ids(tokenizer, "wikipedia")
    prompt = ids[None, :32]  # a Wikipedia passage's first 32 tokens
    for method, folder in smollm2_deploy_checkpoints.items():
        compressed, _ = flatten_hf.load_model(str(folder))
        out = export_gguf(folder, tmp_path / f"{method}.gguf", "f16")
        llm = load_gguf(out, n_ctx=512)
        with torch.no_grad():
            expected = compressed.generate(prompt, max_new_tokens=24, do_sample=False)[0, prompt.shape[1]:].tolist()
        generated = gguf_greedy(llm, prompt[0].tolist(), 24, eos_token_id=tokenizer.eos_token_id)
        assert generated == expected and len(expected) > 4, method
        reference = perplexity(compressed, ids, 512, max_windows=2)
        assert abs(gguf_perplexity(llm, ids, 512, max_windows=2) / reference - 1) < 0.005, method
        del llm
