"""Weight quantization through optimum-quanto: in memory (`--quantize`) and saved (`flatten-hf quantize`)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

import flatten_hf
from flatten_hf.assets import require_asset
from flatten_hf.cli import main
from flatten_hf.quantization import is_quantized_checkpoint, quantize_weights

from .tiny import tiny_model


@pytest.fixture
def checkpoints(tmp_path):
    """A tiny LLaMA with SmolLM2's tokenizer, stock and compressed to per-layer widths (Flattened classes)."""
    tokenizer = AutoTokenizer.from_pretrained(require_asset("smollm2-135m"))
    model = tiny_model("llama", vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    ids = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    per_layer = flatten_hf.compress(model, "flattengpt", calibration_ids=ids, num_layers=1, width_policy="global")
    flatten_hf.save_compressed(per_layer, tmp_path / "per-layer", tokenizer)
    return tmp_path, model, per_layer


def test_quantized_logits_stay_close_and_the_lm_head_is_kept(checkpoints):
    """int8 within 2% of the float logits, int4 further off (random weights of width 64: one scale per row)."""
    tmp_path, _, _ = checkpoints
    x = torch.randint(3, 96, (1, 12), generator=torch.Generator().manual_seed(1))
    for name in ("dense", "per-layer"):
        errors = {}
        for weights in ("int8", "int4"):
            m = flatten_hf.load_model(str(tmp_path / name))[0]
            reference = m(x).logits
            quantize_weights(m, weights)
            assert type(m.lm_head) is torch.nn.Linear  # the LM head keeps the model's dtype
            assert type(m.model.layers[0].mlp.down_proj) is not torch.nn.Linear
            errors[weights] = ((m(x).logits - reference).norm() / reference.norm()).item()
        assert 0 < errors["int8"] < 0.02 and errors["int8"] < errors["int4"] < 1, errors


def test_include_quantizes_only_the_named_modules(checkpoints):
    """`include` is how the benchmark traces an int4 loss to one layer or projection: only those change."""
    tmp_path, _, _ = checkpoints
    m = flatten_hf.load_model(str(tmp_path / "dense"))[0]
    quantize_weights(m, "int4", include=["*.down_proj"])
    for layer in m.model.layers:
        assert type(layer.mlp.down_proj) is not torch.nn.Linear
        assert type(layer.mlp.up_proj) is torch.nn.Linear and type(layer.self_attn.q_proj) is torch.nn.Linear
    m = flatten_hf.load_model(str(tmp_path / "dense"))[0]
    quantize_weights(m, "int4", include=["model.layers.1.*"])
    assert [type(layer.mlp.down_proj) is torch.nn.Linear for layer in m.model.layers][:2] == [True, False]


def test_quantize_command_saves_a_checkpoint_that_ppl_loads(checkpoints, capsys):
    tmp_path, _, _ = checkpoints
    for name in ("dense", "per-layer"):
        out = tmp_path / f"{name}-int8"
        assert main(["quantize", str(tmp_path / name), "--weights", "int8", "--out", str(out)]) == 0
        assert is_quantized_checkpoint(out) and (out / "tokenizer.json").is_file()
        assert "MiB of safetensors" in capsys.readouterr().out
        in_memory, _ = flatten_hf.load_model(str(tmp_path / name), quantize="int8")
        reloaded, _ = flatten_hf.load_model(str(out))
        x = torch.tensor([[5, 6, 7, 8, 9]])
        assert torch.equal(reloaded(x).logits, in_memory(x).logits)
        with pytest.raises(ValueError, match="already quantized"):  # --quantize would silently keep int8
            flatten_hf.load_model(str(out), quantize="int4")
        args = ["--max-windows", "1", "--seq-len", "32"]
        assert main(["ppl", str(out), *args]) == 0 and main(["ppl", str(tmp_path / name), "--quantize", "int4", *args]) == 0
        assert "perplexity" in capsys.readouterr().out
