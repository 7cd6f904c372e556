"""ONNX and OpenVINO export through optimum (optimum-onnx, optimum-intel), each in its own environment because
each pins its own transformers, and their runtimes (ONNX Runtime, OpenVINO) with a KV cache.

These need the environment's Python in `FLATTEN_HF_ONNX_PYTHON` / `FLATTEN_HF_OPENVINO_PYTHON`
(scripts/setup.sh makes .venv-onnx and .venv-openvino, scripts/test.sh sets both); without it a format's
tests are skipped, with it they must pass.
"""

from __future__ import annotations

import os

import pytest

from flatten_hf.cli import main
from flatten_hf.export import OPTIMUM_TOOLS, check_export, export_perplexity

from .test_gguf import _tiny_checkpoints

FORMATS = tuple(OPTIMUM_TOOLS)


def _needs_tool(format: str):
    env = OPTIMUM_TOOLS[format].python_env
    return pytest.mark.skipif(not os.environ.get(env), reason=f"set {env} to an {OPTIMUM_TOOLS[format].tool} "
                                                              "environment's python (scripts/setup.sh makes one)")


WITH_TOOL = [pytest.param(f, marks=_needs_tool(f)) for f in FORMATS]


@pytest.mark.parametrize("format", FORMATS)
def test_optimum_export_refusals_come_first_in_one_line(tmp_path, capsys, monkeypatch, format):
    tool = OPTIMUM_TOOLS[format]
    monkeypatch.delenv(tool.python_env, raising=False)
    stock, _ = _tiny_checkpoints(tmp_path, "llama")
    capsys.readouterr()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / "taken" / tool.marker).write_text("an export beside the user's notes")
    cases = [
        (["--out", str(tmp_path / "export")], "pass --python ENV/bin/python"),
        (["--out", str(tmp_path / "export"), "--python", str(tmp_path / "nothing")], f"is not a Python with {tool.tool}"),
        (["--out", str(tmp_path / "export"), "--quantize", "q8_0"], "--quantize picks a GGUF type"),
        (["--out", str(tmp_path / "taken"), "--overwrite"], "exists and is not empty"),
    ]
    for args, message in cases:
        assert main(["export", str(stock), "--format", format, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine" and not (tmp_path / "export").exists()


@pytest.mark.parametrize("format", WITH_TOOL)
@pytest.mark.parametrize("arch", ("llama", "qwen2"))
def test_exported_runtime_computes_what_transformers_computes(tmp_path, arch, format):
    """Stock and per-layer exports: the runtime's logits within 1e-4 of transformers' scale, and the same greedy
    tokens generated with its KV cache (per-layer head counts included); --overwrite replaces an export."""
    for folder in _tiny_checkpoints(tmp_path, arch):
        out = tmp_path / f"{folder.name}-{format}"
        assert main(["export", str(folder), "--format", format, "--out", str(out)]) == 0
        assert (out / OPTIMUM_TOOLS[format].marker).is_file() and (out / "tokenizer.json").is_file()
        result = check_export(folder, out, format)
        assert result["max_abs_diff"] <= 1e-4 * result["logit_scale"], (folder.name, result)
        assert result["greedy_export"] == result["greedy_transformers"], (folder.name, result)
    assert main(["export", str(folder), "--format", format, "--out", str(out), "--overwrite"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("format", WITH_TOOL)
def test_real_smollm2_exports_match_transformers(smollm2, smollm2_deploy_checkpoints, tmp_path, format):
    """ShortGPT (stock) and FlattenGPT with global widths (per-layer) on real SmolLM2: the runtime's perplexity
    within 0.5% of transformers' on two windows of 512, and identical greedy tokens."""
    from flatten_hf.data import evaluation_ids
    from flatten_hf.perplexity import windows

    _, tokenizer = smollm2
    ids = windows(evaluation_ids(tokenizer, "wikipedia"), 512, 2)
    for method, folder in smollm2_deploy_checkpoints.items():
        out = tmp_path / method
        assert main(["export", str(folder), "--format", format, "--out", str(out)]) == 0
        ppl = export_perplexity(folder, out, ids, format)
        assert abs(ppl["export"] / ppl["transformers"] - 1) < 0.005, (method, ppl)
        check = check_export(folder, out, format)
        assert check["greedy_export"] == check["greedy_transformers"], (method, check)
