"""`flatten-hf export`: a checkpoint in a deployment format, each written by the format's own tool.

- `gguf` (llama.cpp, Ollama): `flatten_hf.gguf_export`, in this environment plus a llama.cpp tree.
- `onnx` (ONNX Runtime) and `openvino` (OpenVINO): `flatten_hf/onnx_export.py` and
  `flatten_hf/openvino_export.py`, each run as a script with the Python of an environment that has
  its optimum tool (optimum-onnx, optimum-intel), which pins another transformers (see those files).
  `OPTIMUM_TOOLS` says what each needs.

`EXPORT_FORMATS` is the one list of formats; the CLI reads it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import _CHECKPOINT_FILES
from .gguf_export import export_gguf


@functools.lru_cache(maxsize=None)
def _imports(python: str, modules: str) -> bool:
    """Whether the interpreter `python` imports `modules`: checked once per process (importing optimum takes
    seconds, and an export, its check and its perplexity each need the interpreter)."""
    return Path(python).is_file() and subprocess.run([python, "-c", f"import {modules}"],
                                                     capture_output=True).returncode == 0


@dataclass(frozen=True)
class OptimumTool:
    """An optimum exporter that pins its own transformers, so it runs `script` in an environment of its own."""

    title: str  # what the export is called in messages and tables ("ONNX")
    runtime: str  # what runs it ("ONNX Runtime")
    tool: str  # the package the user installs there, as the messages name it
    script: str  # next to this file; self-contained (torch, transformers, optimum, optimum_script.py)
    python_env: str  # the variable naming that environment's Python
    probe: str  # modules that environment must import
    install: str  # what `pip install` puts there
    marker: str  # the file every export folder holds
    files: re.Pattern  # every file name an export folder may hold besides checkpoint files

    def find_python(self, python: str | os.PathLike | None = None) -> str:
        """The interpreter of this tool's environment: `python`, else `$python_env`; checked."""
        where = python or os.environ.get(self.python_env)
        if not where:
            raise FileNotFoundError(
                f"This export runs {self.tool}, which pins another transformers and so needs its own environment: "
                f"pass --python ENV/bin/python (python -m venv ENV && ENV/bin/pip install {self.install}) or set "
                f"{self.python_env}.")
        if not _imports(str(where), self.probe):
            raise FileNotFoundError(f"--python {where} is not a Python with {self.tool} installed.")
        return str(where)

    def run(self, python: str, *args: str) -> str:
        """Run the script with `python` (from `find_python`); its stdout, or its last error line as a RuntimeError."""
        done = subprocess.run([python, str(Path(__file__).with_name(self.script)), *args], capture_output=True,
                              text=True)
        if done.returncode != 0:
            last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
            raise RuntimeError(f"{self.tool} failed: {last[0]}")
        return done.stdout


OPTIMUM_TOOLS = {
    "onnx": OptimumTool("ONNX", "ONNX Runtime", "optimum-onnx", "onnx_export.py", "FLATTEN_HF_ONNX_PYTHON",
                        "optimum.exporters.onnx, onnxruntime", "optimum-onnx onnxruntime", "model.onnx",
                        re.compile(r"^model\.onnx(_data)?$")),
    "openvino": OptimumTool("OpenVINO IR", "OpenVINO", "optimum-intel", "openvino_export.py", "FLATTEN_HF_OPENVINO_PYTHON",
                            "optimum.intel.openvino, openvino", "'optimum-intel[openvino]'", "openvino_model.xml",
                            re.compile(r"^openvino_model\.(xml|bin)$")),
}
# format -> what the --out names, and the tool that writes it (for --help)
EXPORT_FORMATS = {
    "gguf": "a .gguf file (llama.cpp's converter; per-layer checkpoints as its deci architecture)",
    "onnx": "a folder with model.onnx, config and tokenizer (optimum-onnx, in the environment given by --python)",
    "openvino": "a folder with the OpenVINO IR (openvino_model.xml/.bin, stateful KV cache), config and tokenizer "
                "(optimum-intel, in the environment given by --python)",
}


def export_optimum(model_dir: str | os.PathLike, out_dir: str | os.PathLike, format: str = "onnx",
                   python: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Export `model_dir` to the folder `out_dir` (all or nothing) with `format`'s optimum tool, KV cache included."""
    tool = OPTIMUM_TOOLS[format]
    model_dir, out = Path(model_dir), Path(out_dir).expanduser()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; export takes a checkpoint folder.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        foreign = [p.name for p in out.iterdir() if not (tool.files.match(p.name) or _CHECKPOINT_FILES.match(p.name))
                   ] if out.is_dir() else [out.name]
        if not overwrite or not (out / tool.marker).is_file() or foreign:
            raise FileExistsError(f"--out {out} exists and is not empty; choose another folder (--overwrite replaces "
                                  f"only a previous {format} export, with no other files in it).")
    python = tool.find_python(python)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch:
        staged = Path(scratch) / format
        tool.run(python, str(model_dir), str(staged))
        if out.exists():
            shutil.rmtree(out)  # an empty folder, or a previous export of this format and nothing else (checked above)
        os.replace(staged, out)
    return out


def export_bytes(out: str | os.PathLike) -> int:
    """Bytes an export wrote: the file, or every file in the folder."""
    out = Path(out)
    return out.stat().st_size if out.is_file() else sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def check_export(model_dir: str | os.PathLike, out_dir: str | os.PathLike, format: str = "onnx",
                 python: str | os.PathLike | None = None) -> dict:
    """The export's runtime against transformers (both in the tool's environment): the largest logit
    difference (`max_abs_diff`, next to `logit_scale`) and 12 greedy tokens with the KV cache
    (`greedy_export`, `greedy_transformers`)."""
    tool = OPTIMUM_TOOLS[format]
    return json.loads(tool.run(tool.find_python(python), "--check", str(model_dir), str(out_dir)).splitlines()[-1])


def export_perplexity(model_dir: str | os.PathLike, out_dir: str | os.PathLike, windows, format: str = "onnx",
                      python: str | os.PathLike | None = None) -> dict:
    """Perplexity of transformers and of the export (`transformers`, `export`; in the tool's environment) on
    `windows`, a `[n, seq_len]` tensor of token ids such as `flatten_hf.perplexity.windows(evaluation_ids(...))`."""
    import torch

    tool = OPTIMUM_TOOLS[format]
    python = tool.find_python(python)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "windows.pt"
        torch.save(windows.clone(), path)
        return json.loads(tool.run(python, "--windows", str(path), str(model_dir), str(out_dir)).splitlines()[-1])


def export(model_dir: str | os.PathLike, out: str | os.PathLike, format: str = "gguf", *,
           quantize: str | None = None, llama_cpp: str | os.PathLike | None = None,
           python: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write `model_dir` in `format` (one of `EXPORT_FORMATS`) to `out`; returns what was written."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    if format == "gguf":
        return export_gguf(model_dir, out, quantize or "f16", llama_cpp=llama_cpp, overwrite=overwrite)
    if quantize:
        raise ValueError(f"--quantize picks a GGUF type; {format} exports keep the checkpoint's float weights.")
    return export_optimum(model_dir, out, format, python=python, overwrite=overwrite)
