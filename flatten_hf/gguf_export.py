"""Export a (compressed) checkpoint to GGUF for llama.cpp, Ollama and llama-cpp-python.

A thin layer over llama.cpp's own tools, not a second converter:

- **Conversion** runs llama.cpp's `convert_hf_to_gguf.py` from a llama.cpp source tree
  (`--llama-cpp DIR` or `LLAMA_CPP_DIR`). Stock checkpoints (ShortGPT, ReplaceMe, uniform FlattenGPT)
  go through it as the plain LLaMA / Qwen2 models they are. Per-layer (Flattened) checkpoints go
  through it as llama.cpp's `deci` architecture, whose GGUF holds per-layer head counts and MLP widths
  (`flatten_hf.gguf_deci` registers that one converter class). The converter writes f32, f16, bf16
  and q8_0 itself.
- **Quantization** to llama.cpp's other types (q4_0, q4_k_m, ...) is `llama_model_quantize` of
  llama-cpp-python on the converter's f16 file, as the `llama-quantize` tool does.

A quantization type packs each weight row in blocks (32 values for q8_0 / q4_0 / q5_0, 256 for the
k-quants). A row whose length is no multiple of the block cannot use the type: llama.cpp then stores
that tensor in a fallback type (a 32-block type, or f16). Rows are input features, so the MLP widths
of a per-layer model decide it for the down projections; `misaligned_tensors` names them before
anything runs, and FlattenGPT's `--width-multiple` rounds the widths at compress time so that every
tensor quantizes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .quantization import is_quantized_checkpoint

logger = logging.getLogger(__name__)

# Written by the converter itself.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
# Made from the f16 file with llama-cpp-python's llama_model_quantize (llama-quantize's types).
QUANTIZE_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
GGUF_TYPES = CONVERTER_TYPES + QUANTIZE_TYPES
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "flatten_llama", "flatten_qwen2")
LLAMA_CPP_ENV = "LLAMA_CPP_DIR"
GGUF_MAGIC = b"GGUF"


def block_size(gguf_type: str) -> int:
    """Values per quantization block of a GGUF type's main tensors (1 for the float types)."""
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}.")
    if gguf_type in ("f32", "f16", "bf16"):
        return 1
    return 256 if "_k" in gguf_type else 32


@dataclass(frozen=True)
class Misaligned:
    """A weight whose rows do not split into whole quantization blocks."""

    tensor: str
    row_length: int


def misaligned_tensors(config: dict, gguf_type: str) -> list[Misaligned]:
    """The weights of `config` (a config.json dict) that `gguf_type` cannot hold, in llama.cpp's terms:
    a tensor's rows are its input features (hidden size, heads x head_dim, or MLP width)."""
    block = block_size(gguf_type)
    if block == 1:
        return []
    n = config["num_hidden_layers"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    heads = config.get("num_attention_heads_per_layer") or [config["num_attention_heads"]] * n
    widths = config.get("intermediate_size_per_layer") or [config["intermediate_size"]] * n
    out = []
    if config["hidden_size"] % block:
        out.append(Misaligned("every projection reading the hidden state", config["hidden_size"]))
    for i, (h, w) in enumerate(zip(heads, widths)):
        if h * head_dim % block:
            out.append(Misaligned(f"layers.{i}.self_attn.o_proj", h * head_dim))
        if w % block:
            out.append(Misaligned(f"layers.{i}.mlp.down_proj", w))
    return out


def find_llama_cpp(llama_cpp: str | os.PathLike | None = None) -> Path:
    """The llama.cpp source tree to convert with: `llama_cpp`, else `$LLAMA_CPP_DIR`."""
    where = llama_cpp or os.environ.get(LLAMA_CPP_ENV)
    if not where:
        raise FileNotFoundError(
            f"GGUF export runs llama.cpp's converter: pass --llama-cpp DIR (a llama.cpp source tree, e.g. a clone of "
            f"https://github.com/ggml-org/llama.cpp or the vendor/llama.cpp folder of the llama-cpp-python sdist) or "
            f"set {LLAMA_CPP_ENV}.")
    root = Path(where).expanduser()
    if not (root / "convert_hf_to_gguf.py").is_file() or not (root / "conversion" / "deci.py").is_file():
        raise FileNotFoundError(
            f"{root} is not a llama.cpp source tree with the modular converter (convert_hf_to_gguf.py and "
            "conversion/deci.py); use a llama.cpp from 2026 or later.")
    return root


def _check_model(model_dir: Path) -> dict:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; export takes a checkpoint folder.")
    if is_quantized_checkpoint(model_dir):
        raise ValueError(f"{model_dir} holds quanto-quantized weights, which llama.cpp cannot read; export the "
                         "float checkpoint and pick a GGUF type with --quantize instead.")
    if not any(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"{model_dir} has no safetensors weights.")
    config = json.loads(config_path.read_text())
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"GGUF export supports LLaMA and Qwen2 checkpoints (stock or Flattened), not "
                         f"model_type {model_type!r}.")
    if config.get("use_sliding_window"):
        raise ValueError("this checkpoint uses sliding-window attention, which llama.cpp's qwen2 and deci "
                         "architectures do not implement; its GGUF would compute something else.")
    return config


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix != ".gguf":
        raise ValueError(f"--out {out} must name a .gguf file.")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; name the .gguf file to write.")
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it.")
        with open(out, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise FileExistsError(f"--out {out} exists and is not a GGUF file; it is not replaced, choose "
                                      "another --out.")
    if not os.access(out.parent if out.parent.exists() else Path.cwd(), os.W_OK):
        raise PermissionError(f"--out {out}: the folder is not writable.")


def _convert(llama_cpp: Path, model_dir: Path, out: Path, outtype: str) -> None:
    command = [sys.executable, "-m", "flatten_hf.gguf_deci", str(llama_cpp), str(model_dir),
               "--outfile", str(out), "--outtype", outtype]
    logger.info("converting with llama.cpp: %s", " ".join(command[3:]))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        logger.debug("converter output:\n%s", done.stderr)
        raise RuntimeError(f"llama.cpp's converter failed on {model_dir}: {last[0]} (rerun with -v for its output)")
    logger.debug("converter output:\n%s", done.stderr)


def require_llama_cpp_python(why: str) -> None:
    """Fail with the extra to install, before anything runs."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(f"{why} needs llama-cpp-python: pip install 'flatten-hf[gguf]'.",
                                  name="llama_cpp") from None


def _quantize(f16: Path, out: Path, gguf_type: str) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type.upper()}")
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {f16} to {gguf_type}.")


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, gguf_type: str = "f16",
                llama_cpp: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write `model_dir` as one GGUF file `out` of `gguf_type` (see `GGUF_TYPES`); returns its path.

    Everything checkable is checked before the converter runs; the file appears only when complete
    (written next to `out` and renamed). Tensors the type cannot hold are logged as a warning, with
    what llama.cpp stores instead.
    """
    model_dir, out = Path(model_dir), Path(out).expanduser()
    block_size(gguf_type)
    config = _check_model(model_dir)
    _check_out(out, overwrite)
    root = find_llama_cpp(llama_cpp)
    if gguf_type in QUANTIZE_TYPES:
        require_llama_cpp_python(f"GGUF type {gguf_type} (made by llama.cpp's quantizer)")
    misaligned = misaligned_tensors(config, gguf_type)
    if misaligned:
        fallback = "f16" if gguf_type in CONVERTER_TYPES else "a 32-value block type (or f16)"
        logger.warning("%d tensor(s) have rows not divisible by %d, the block of %s, and are stored as %s: %s%s",
                       len(misaligned), block_size(gguf_type), gguf_type, fallback,
                       ", ".join(f"{m.tensor} ({m.row_length})" for m in misaligned[:6]),
                       "" if len(misaligned) <= 6 else ", ...")
        if "intermediate_size_per_layer" in config and any("mlp" in m.tensor for m in misaligned):
            logger.warning("compress with FlattenGPT's --width-multiple %d to make every MLP width quantize.",
                           block_size(gguf_type))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch:
        converted = Path(scratch) / ("model-f16.gguf" if gguf_type in QUANTIZE_TYPES else out.name)
        _convert(root, model_dir, converted, "f16" if gguf_type in QUANTIZE_TYPES else gguf_type)
        if gguf_type in QUANTIZE_TYPES:
            quantized = Path(scratch) / out.name
            _quantize(converted, quantized, gguf_type)
            converted = quantized
        os.replace(converted, out)
    return out
