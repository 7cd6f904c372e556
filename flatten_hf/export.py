"""`flatten-hf export`: a checkpoint in a deployment format, each written by the format's own tool.

- `gguf` (llama.cpp, Ollama): `flatten_hf.gguf_export`, in this environment plus a llama.cpp tree.
- `onnx` (ONNX Runtime): `flatten_hf/onnx_export.py`, run as a script with the Python of an
  environment that has optimum-onnx, which pins transformers 4.x (see that file).

`EXPORT_FORMATS` is the one list of formats; the CLI reads it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .checkpoint import _CHECKPOINT_FILES
from .gguf_export import export_gguf

ONNX_PYTHON_ENV = "FLATTEN_HF_ONNX_PYTHON"
ONNX_SCRIPT = Path(__file__).with_name("onnx_export.py")
# What an ONNX export folder holds besides checkpoint files (config, tokenizer, modeling code).
_ONNX_FILES = re.compile(r"^model\.onnx(_data)?$")
# format -> what the --out names, and the tool that writes it (for --help)
EXPORT_FORMATS = {
    "gguf": "a .gguf file (llama.cpp's converter; per-layer checkpoints as its deci architecture)",
    "onnx": "a folder with model.onnx, config and tokenizer (optimum-onnx, in the environment given by --python)",
}


def find_onnx_python(python: str | os.PathLike | None = None) -> str:
    """The interpreter of an optimum-onnx environment: `python`, else `$FLATTEN_HF_ONNX_PYTHON`; checked."""
    where = python or os.environ.get(ONNX_PYTHON_ENV)
    if not where:
        raise FileNotFoundError(
            f"ONNX export runs optimum-onnx, which needs transformers 4.x and so its own environment: pass --python "
            f"ENV/bin/python (python -m venv ENV && ENV/bin/pip install optimum-onnx onnxruntime) or set "
            f"{ONNX_PYTHON_ENV}.")
    probe = subprocess.run([str(where), "-c", "import optimum.exporters.onnx, onnxruntime"], capture_output=True,
                           text=True) if Path(where).is_file() else None
    if probe is None or probe.returncode != 0:
        raise FileNotFoundError(f"--python {where} is not a Python with optimum-onnx and onnxruntime installed.")
    return str(where)


def _run(python: str, *args: str) -> str:
    done = subprocess.run([python, str(ONNX_SCRIPT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        raise RuntimeError(f"optimum-onnx failed: {last[0]}")
    return done.stdout


def export_onnx(model_dir: str | os.PathLike, out_dir: str | os.PathLike, python: str | os.PathLike | None = None,
                overwrite: bool = False) -> Path:
    """Export `model_dir` to the folder `out_dir` (all or nothing) with optimum-onnx, KV cache included."""
    model_dir, out = Path(model_dir), Path(out_dir).expanduser()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; export takes a checkpoint folder.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        foreign = [p.name for p in out.iterdir() if not (_ONNX_FILES.match(p.name) or _CHECKPOINT_FILES.match(p.name))
                   ] if out.is_dir() else [out.name]
        if not overwrite or not (out / "model.onnx").is_file() or foreign:
            raise FileExistsError(f"--out {out} exists and is not empty; choose another folder (--overwrite replaces "
                                  "only a previous ONNX export, with no other files in it).")
    python = find_onnx_python(python)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch:
        staged = Path(scratch) / "onnx"
        _run(python, str(model_dir), str(staged))
        if out.exists():
            shutil.rmtree(out)  # an empty folder, or a previous ONNX export and nothing else (checked above)
        os.replace(staged, out)
    return out


def export_bytes(out: str | os.PathLike) -> int:
    """Bytes an export wrote: the file, or every file in the folder."""
    out = Path(out)
    return out.stat().st_size if out.is_file() else sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def check_onnx(model_dir: str | os.PathLike, out_dir: str | os.PathLike, python: str | os.PathLike | None = None
               ) -> dict:
    """ONNX Runtime against transformers (both in the optimum-onnx environment): logits and greedy tokens."""
    import json

    return json.loads(_run(find_onnx_python(python), "--check", str(model_dir), str(out_dir)).splitlines()[-1])


def onnx_perplexity(model_dir: str | os.PathLike, out_dir: str | os.PathLike, windows, python=None) -> dict:
    """Perplexity of transformers and ONNX Runtime (in the optimum-onnx environment) on `windows`, a
    `[n, seq_len]` tensor of token ids such as `flatten_hf.perplexity.windows(evaluation_ids(...))`."""
    import json

    import torch

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "windows.pt"
        torch.save(windows.clone(), path)
        return json.loads(_run(find_onnx_python(python), "--windows", str(path), str(model_dir), str(out_dir))
                          .splitlines()[-1])


def export(model_dir: str | os.PathLike, out: str | os.PathLike, format: str = "gguf", *,
           quantize: str | None = None, llama_cpp: str | os.PathLike | None = None,
           python: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write `model_dir` in `format` (one of `EXPORT_FORMATS`) to `out`; returns what was written."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    if format == "gguf":
        return export_gguf(model_dir, out, quantize or "f16", llama_cpp=llama_cpp, overwrite=overwrite)
    if quantize:
        raise ValueError("--quantize picks a GGUF type; ONNX exports keep the checkpoint's float weights.")
    return export_onnx(model_dir, out, python=python, overwrite=overwrite)
