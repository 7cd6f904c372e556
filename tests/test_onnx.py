"""ONNX export through optimum-onnx (in its own environment, transformers 4.57) and ONNX Runtime with a KV cache.

These need `FLATTEN_HF_ONNX_PYTHON`, the Python of an optimum-onnx environment (scripts/setup.sh makes
.venv-onnx and scripts/test.sh sets it); without it they are skipped, with it they must pass.
"""

from __future__ import annotations

import os

import pytest

from flatten_hf.cli import main
from flatten_hf.export import check_onnx, onnx_perplexity

from .test_gguf import _tiny_checkpoints

needs_optimum_onnx = pytest.mark.skipif(not os.environ.get("FLATTEN_HF_ONNX_PYTHON"),
                                        reason="set FLATTEN_HF_ONNX_PYTHON to an optimum-onnx environment's python")


def test_onnx_refusals_come_first_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FLATTEN_HF_ONNX_PYTHON", raising=False)
    stock, _ = _tiny_checkpoints(tmp_path, "llama")
    capsys.readouterr()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / "taken" / "model.onnx").write_text("an export beside the user's notes")
    cases = [
        (["--out", str(tmp_path / "onnx")], "pass --python ENV/bin/python"),
        (["--out", str(tmp_path / "onnx"), "--python", str(tmp_path / "nothing")], "is not a Python with optimum-onnx"),
        (["--out", str(tmp_path / "onnx"), "--quantize", "q8_0"], "--quantize picks a GGUF type"),
        (["--out", str(tmp_path / "taken"), "--overwrite"], "exists and is not empty"),
    ]
    for args, message in cases:
        assert main(["export", str(stock), "--format", "onnx", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine" and not (tmp_path / "onnx").exists()


@needs_optimum_onnx
@pytest.mark.parametrize("arch", ("llama", "qwen2"))
def test_onnx_runtime_computes_what_transformers_computes(tmp_path, arch):
    """Stock and per-layer exports: ONNX Runtime's logits within 1e-4 of transformers' scale, and the same
    greedy tokens generated with its KV cache (per-layer head counts included)."""
    for folder in _tiny_checkpoints(tmp_path, arch):
        out = tmp_path / f"{folder.name}-onnx"
        assert main(["export", str(folder), "--format", "onnx", "--out", str(out)]) == 0
        assert (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file()
        result = check_onnx(folder, out)
        assert result["max_abs_diff"] <= 1e-4 * result["logit_scale"], (folder.name, result)
        assert result["greedy_onnxruntime"] == result["greedy_transformers"], (folder.name, result)
    assert main(["export", str(folder), "--format", "onnx", "--out", str(out), "--overwrite"]) == 0


@pytest.mark.slow
@needs_optimum_onnx
def test_real_smollm2_onnx_exports_match_transformers(smollm2, smollm2_deploy_checkpoints, tmp_path):
    """ShortGPT (stock) and FlattenGPT with global widths (per-layer) on real SmolLM2: ONNX Runtime's
    perplexity within 0.5% of transformers' on two windows of 512, and identical greedy tokens."""
    from flatten_hf.data import evaluation_ids
    from flatten_hf.perplexity import windows

    _, tokenizer = smollm2
    ids = windows(evaluation_ids(tokenizer, "wikipedia"), 512, 2)
    for method, folder in smollm2_deploy_checkpoints.items():
        out = tmp_path / method
        assert main(["export", str(folder), "--format", "onnx", "--out", str(out)]) == 0
        ppl = onnx_perplexity(folder, out, ids)
        assert abs(ppl["onnxruntime"] / ppl["transformers"] - 1) < 0.005, (method, ppl)
        check = check_onnx(folder, out)
        assert check["greedy_onnxruntime"] == check["greedy_transformers"], (method, check)
