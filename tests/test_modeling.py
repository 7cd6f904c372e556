"""Flattened model classes: dense equivalence, heterogeneous widths, generation, save/load, remote code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from flatten_hf.adapters import get_adapter
from flatten_hf.checkpoint import save_compressed

from .tiny import randomize, tiny_config, tiny_model

HETERO = dict(num_attention_heads_per_layer=[4, 8, 2, 6], num_key_value_heads_per_layer=[2, 4, 1, 3],
              intermediate_size_per_layer=[48, 96, 7, 30])


def flattened(arch: str, attn: str = "sdpa", seed: int = 0, config_overrides: dict | None = None, **per_layer):
    spec = get_adapter(arch)
    fields = {k: v for k, v in tiny_config(arch, **(config_overrides or {})).to_dict().items()
              if k not in ("model_type", "architectures", "transformers_version")}
    config = spec.flatten_config_class(**fields, **per_layer)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return randomize(spec.flatten_model_class(config), seed)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_dense_widths_give_stock_logits(arch, attn):
    ref = tiny_model(arch, attn=attn)
    model = flattened(arch, attn)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    # Qwen3's shared q/k norm vector becomes one identical row per head in the Flattened layers
    model.load_state_dict({k: v.expand(shapes[k]) for k, v in ref.state_dict().items()})
    ids = torch.randint(3, 96, (2, 11))
    torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)


def test_set_attn_implementation_reaches_every_layer(arch):
    model = flattened(arch, "sdpa", **HETERO)
    ids = torch.randint(3, 96, (2, 9))
    sdpa = model(ids).logits
    model.set_attn_implementation("eager")
    assert all(layer.self_attn.config._attn_implementation == "eager" for layer in model.model.layers)
    torch.testing.assert_close(model(ids).logits, sdpa, rtol=1e-4, atol=1e-5)


def test_heterogeneous_layers_have_their_own_shapes(arch):
    model = flattened(arch, **HETERO)
    shapes = [(l.self_attn.q_proj.out_features, l.self_attn.k_proj.out_features, l.mlp.up_proj.out_features)
              for l in model.model.layers]
    assert shapes == [(64, 32, 48), (128, 64, 96), (32, 16, 7), (96, 48, 30)]
    if arch == "qwen2":
        assert model.model.layers[1].self_attn.q_proj.bias.shape == (128,)
    if arch in ("qwen2", "qwen3"):
        assert [l.self_attn.sliding_window for l in model.model.layers] == [None, None, 6, 6]
    if arch == "mistral":
        assert all(l.self_attn.config.sliding_window == 6 for l in model.model.layers)
    if arch == "qwen3":  # one q/k norm row per head
        assert [(l.self_attn.q_norm.weight.shape, l.self_attn.k_norm.weight.shape) for l in model.model.layers] == [
            ((h, 16), (kv, 16)) for h, kv in zip(HETERO["num_attention_heads_per_layer"],
                                                  HETERO["num_key_value_heads_per_layer"])]
    assert model(torch.randint(3, 96, (1, 5))).logits.shape == (1, 5, 96)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_matches_full_forward(arch, cache):
    model = flattened(arch, **HETERO)
    ids = torch.randint(3, 96, (1, 6))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                         cache_implementation=cache, pad_token_id=0)
    # greedy decoding with a cache must pick the argmax of a cache-free forward at every step
    for step in range(5):
        prefix = out[:, : 6 + step]
        assert model(prefix).logits[0, -1].argmax() == out[0, 6 + step]


def test_padded_batch_matches_single_sequences(arch):
    model = flattened(arch, **HETERO)
    a, b = torch.randint(3, 96, (7,)), torch.randint(3, 96, (4,))
    ids = torch.stack([a, torch.cat([torch.zeros(3, dtype=torch.long), b])])  # left padding
    mask = torch.stack([torch.ones(7), torch.cat([torch.zeros(3), torch.ones(4)])]).long()
    batched = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(batched[0], model(a[None]).logits[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched[1, 3:], model(b[None]).logits[0], rtol=1e-4, atol=1e-5)


def test_save_load_is_bit_exact(arch, tmp_path):
    model = flattened(arch, **HETERO)
    save_compressed(model, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == f"flatten_{arch}"
    assert config["num_attention_heads_per_layer"] == HETERO["num_attention_heads_per_layer"]
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(model)
    for (name, p), (name2, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name2 and torch.equal(p, q), name
    ids = torch.randint(3, 96, (2, 8))
    assert torch.equal(model(ids).logits, loaded(ids).logits)


REMOTE_LOAD = textwrap.dedent("""
    import sys, torch
    sys.modules["flatten_hf"] = None  # flatten-hf must not be importable here
    try:
        import flatten_hf
        raise SystemExit("flatten_hf was importable")
    except ImportError:
        pass
    from transformers import AutoModelForCausalLM
    path, remote = sys.argv[1], sys.argv[2] == "1"
    if remote:
        try:
            AutoModelForCausalLM.from_pretrained(path)
            raise SystemExit("loaded custom code without trust_remote_code")
        except ValueError as e:
            assert "trust_remote_code" in str(e), e
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=remote)
    ids, new_tokens = torch.load(sys.argv[3]), int(sys.argv[5])
    import transformers
    out = {"cls": type(model).__module__ + "." + type(model).__name__, "logits": model(ids).logits,
           "transformers": transformers.__version__}
    if new_tokens:
        out["generated"] = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                          do_sample=False)
    torch.save(out, sys.argv[4])
""")


def load_in_clean_process(path, ids: torch.Tensor, tmp_path, remote: bool, python: str = sys.executable,
                          new_tokens: int = 0) -> dict:
    """Load `path` in a fresh Python where flatten_hf cannot be imported; return its class and logits
    (and, with `new_tokens`, its greedy continuation of `ids`). `python` may be another environment,
    e.g. one with transformers 4.57."""
    torch.save(ids, tmp_path / "ids.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([python, "-c", REMOTE_LOAD, str(path), "1" if remote else "0",
                           str(tmp_path / "ids.pt"), str(tmp_path / "out.pt"), str(new_tokens)],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "out.pt")


# The bare transformers-4.57 environment made by scripts/setup.sh: Hub users on the last 4.x line.
PYTHON_V4 = Path(__file__).resolve().parents[1] / ".venv-transformers4" / "bin" / "python"


@pytest.mark.parametrize("python", [sys.executable, str(PYTHON_V4)], ids=["transformers5", "transformers4.57"])
def test_trust_remote_code_load_without_flatten_hf(arch, python, tmp_path):
    assert Path(python).exists(), "run `bash scripts/setup.sh` to create .venv-transformers4 (transformers 4.57)"
    model = flattened(arch, config_overrides={"rope_theta": 50000.0}, **HETERO)  # not the 10000 default
    save_compressed(model, tmp_path / "ckpt")
    assert {"configuration_flatten.py", "modeling_flatten.py"} <= set(os.listdir(tmp_path / "ckpt"))
    ids = torch.randint(3, 96, (2, 8))
    got = load_in_clean_process(tmp_path / "ckpt", ids, tmp_path, remote=True, python=python, new_tokens=4)
    assert got["cls"].startswith("transformers_modules.") and got["cls"].endswith(type(model).__name__)
    assert got["transformers"].startswith("4.57" if python == str(PYTHON_V4) else "5.")
    torch.testing.assert_close(got["logits"], model(ids).logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(got["generated"], model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                                        do_sample=False))
