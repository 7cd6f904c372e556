"""Loading models by name and saving compressed checkpoints atomically.

A model argument is an offline asset name (`smollm2-135m`, the default, or `qwen2.5-coder-0.5b`), a
local checkpoint directory, or a Hub id (for users with network). Saving writes into a temporary
sibling directory and renames it into place, so a failure never leaves a half-written output.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .adapters import adapter_for, is_flattened
from .assets import ASSET_HUB_IDS, ASSETS, DEFAULT_MODEL_ASSET, require_asset
from .checks import AUTO_DEVICE, non_finite_parameters
from .plan import MergePlan
from .quantization import QMAP_FILE, is_quantized_checkpoint, load_quantized, quantize_weights

logger = logging.getLogger(__name__)

def resolve_model_path(model: str | None) -> str:
    """Map an asset name (or None, the embedded default) to its cache directory; check a local folder.

    Anything else must look like a Hub id (`owner/name`): a bare word that is no asset is a typo far
    more often than a legacy Hub id, and would otherwise end in "couldn't connect to huggingface.co".
    """
    name = model or DEFAULT_MODEL_ASSET
    if name in ASSETS and name in ASSET_HUB_IDS:
        return str(require_asset(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model {name!r} is a folder without config.json, not a model checkpoint.")
        return str(path)
    if "/" not in name:
        close = difflib.get_close_matches(name, ASSET_HUB_IDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}: not an asset ({', '.join(ASSET_HUB_IDS)}), a local folder or a "
                         f"Hub id (owner/name).{hint}")
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or name.endswith("/"):
        raise FileNotFoundError(f"model {name!r}: no such folder.")
    return name


def local_checkpoint(model: str | os.PathLike | None) -> str:
    """`resolve_model_path`, plus a Hub id downloaded to the local cache (config, weights, tokenizer),
    for the code that reads files directly instead of through `from_pretrained`."""
    path = resolve_model_path(str(model) if model is not None else None)
    if Path(path).is_dir():
        return path
    from huggingface_hub import snapshot_download

    return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])


def base_model_id(model: str | None) -> str:
    """A human-meaningful id of the model a user asked for (the upstream Hub id for offline assets)."""
    name = model or DEFAULT_MODEL_ASSET
    return ASSET_HUB_IDS.get(name, name)


def check_stock_can_hold(config, plan: MergePlan) -> None:
    """A stock config whose plan mixes heads of several layers where the stock layer shares a per-head
    weight (Qwen3's q/k norms) describes weights it cannot hold: refuse it, naming the layer."""
    mixed = [] if is_flattened(config) else adapter_for(config).layers_stock_cannot_hold(plan)
    if mixed:
        raise ValueError(f"flatten.layers[{mixed[0]}] takes attention heads from several original layers, but a "
                         f"stock {type(config).__name__} layer shares one q/k norm across its heads; the checkpoint "
                         "needs the Flattened classes or a corrected plan.")


def load_model(model: str | None = None, dtype: str | torch.dtype = "float32", device: str | None = None,
               quantize: str | None = None) -> tuple[PreTrainedModel, object]:
    """Load a causal LM and its tokenizer (default: the embedded SmolLM2-135M).

    `device="auto"` loads with accelerate's `device_map="auto"`: the layers spread over the visible
    GPUs and then the CPU, for evaluating a model that fits on no single device. `quantize` ('int8',
    'int4') quantizes the linear weights after loading (`flatten_hf.quantization`); a checkpoint saved
    by `flatten-hf quantize` loads quantized as it is.
    """
    path = resolve_model_path(model)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    logger.info("Loading %s (%s)", path, dtype)
    if quantize and is_quantized_checkpoint(path):
        raise ValueError(f"{path} is already quantized (it has {QMAP_FILE}); load it without --quantize, or quantize "
                         "the unquantized checkpoint.")
    try:
        config = AutoConfig.from_pretrained(path)
        if getattr(config, "flatten", None):
            check_stock_can_hold(config, MergePlan.from_config(config))  # before the weights are read
        placement = {"device_map": "auto"} if device == AUTO_DEVICE else {}
        if is_quantized_checkpoint(path):
            lm = load_quantized(path)
        else:
            lm = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, **placement)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, SafetensorError) as e:  # missing, truncated or empty files; no network
        raise ValueError(f"cannot load {path}: {str(e).strip().splitlines()[0]}") from e
    bad = non_finite_parameters(lm)
    if bad:
        logger.warning("%s has NaN or infinite weights in %d tensors (first: %s): its outputs are meaningless",
                       path, len(bad), bad[0])
    if device and device != AUTO_DEVICE:
        lm.to(device)
    if quantize:
        quantize_weights(lm, quantize)
    return lm.eval(), tokenizer


# Staging and set-aside folders are siblings of the output named `.<out>.flatten-hf-<kind>-<pid>-<random>`, so that a
# later run can tell its own leftovers (from a SIGKILL, a power cut) from a user's files and clean them up.
_OWN_SIBLING = re.compile(r"^\.(?P<out>.+)\.flatten-hf-(?P<kind>staging|previous)-(?P<pid>\d+)-[^/]+$")
# What a checkpoint folder written by flatten-hf holds; `--overwrite` replaces such a folder and nothing else.
_CHECKPOINT_FILES = re.compile(
    r"^(config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|"
    r"tokenizer(_config)?\.json|tokenizer\.model|special_tokens_map\.json|added_tokens\.json|vocab\.json|"
    r"merges\.txt|chat_template\.jinja|README\.md|eval_results\.json|configuration_flatten\.py|quanto_qmap\.json|"
    r"modeling_flatten\.py|\.gitattributes)$")


def _is_flatten_checkpoint(folder: Path) -> bool:
    try:
        return "flatten" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool = False,
                     inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse, before any compute, an `out_dir` whose replacement could lose a user's files.

    Without `overwrite` the folder must be new or empty. With it, the folder may hold a previous
    flatten-hf checkpoint (config.json with a merge plan, and only the files a checkpoint has): that
    is what `--overwrite` replaces, nothing else. Never allowed: the working directory or one of its
    parents, and any of `inputs` (the model being read) or a folder that contains one. The nearest
    existing ancestor must be writable, so an unwritable `--out` fails now, not after the compute.
    """
    out = Path(out_dir).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise ValueError(f"--out {out_dir} is the working directory or a parent of it; name a new folder for the "
                         "checkpoint.")
    for source in inputs:
        source = Path(source).expanduser().resolve()
        if out == source or out in source.parents:
            raise ValueError(f"--out {out_dir} would replace the input model {source}; choose another folder.")
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"--out {out_dir} is a file, not a folder; choose another --out.")
        contents = sorted(p.name for p in out.iterdir())
        if contents and not overwrite:
            raise FileExistsError(f"--out {out_dir} exists and is not empty; choose another --out or pass --overwrite "
                                  "(overwrite=True) to replace the checkpoint in it.")
        if contents:
            foreign = [name for name in contents if not _CHECKPOINT_FILES.match(name)]
            if not _is_flatten_checkpoint(out) or foreign:
                what = f"files that are not part of a checkpoint ({', '.join(foreign[:5])})" if foreign else \
                    "no flatten-hf checkpoint (config.json with a merge plan)"
                raise FileExistsError(f"--out {out_dir} holds {what}; --overwrite replaces only a previous flatten-hf "
                                      "checkpoint. Choose another --out.")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FileExistsError(f"--out {out_dir}: {ancestor} is a file, so no folder can be made under it.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out_dir}: cannot write to {ancestor}; choose a writable folder.")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_siblings(parent: Path) -> None:
    """Remove the staging folders of dead flatten-hf runs in `parent`; put back a set-aside checkpoint.

    A run killed with SIGKILL cannot clean up after itself. Its staging folder is half-written and
    is removed; a `previous` folder is a checkpoint the run had moved aside to replace it: if the
    replacement never landed it is moved back, otherwise it is removed.
    """
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        m = _OWN_SIBLING.match(entry.name)
        if not m or not entry.is_dir() or _pid_alive(int(m["pid"])):
            continue
        target = parent / m["out"]
        if m["kind"] == "previous" and not target.exists():
            os.replace(entry, target)
            logger.warning("Restored %s, which an interrupted run (pid %s) had moved aside", target, m["pid"])
        else:
            shutil.rmtree(entry, ignore_errors=True)
            logger.warning("Removed %s, left behind by an interrupted run (pid %s)", entry, m["pid"])


def _sibling(out: Path, kind: str) -> Path:
    folder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.flatten-hf-{kind}-{os.getpid()}-"))
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700); the checkpoint is an ordinary folder
    return folder


def add_v4_rope_keys(config_path: Path) -> None:
    """Also write RoPE settings the way transformers 4.x reads them, next to 5.x's `rope_parameters`.

    transformers 5 saves `rope_parameters` only; 4.57 ignores that key and silently falls back to
    rope_theta=10000 (SmolLM2 uses 100000, Qwen2.5 1000000), producing wrong logits with no error.
    The top-level `rope_theta` (and `rope_scaling` for non-default RoPE) are what 4.x reads, and 5.x
    still accepts them, so the checkpoint loads correctly on both lines.
    """
    config = json.loads(config_path.read_text())
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" not in rope:
        return
    config.setdefault("rope_theta", rope["rope_theta"])
    if rope.get("rope_type", "default") != "default":
        config.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# transformers 5 names the class every tokenizers-backed tokenizer loads as; 4.x does not know it and
# silently loads no tokenizer (optimum-onnx's export then writes none). `PreTrainedTokenizerFast` is
# what 4.x calls the same thing, and 5.x maps it back to `TokenizersBackend`.
_V4_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def add_v4_tokenizer_class(tokenizer_config_path: Path) -> None:
    """Name the tokenizer class in `tokenizer_config.json` so that transformers 4.x loads it too."""
    if not tokenizer_config_path.is_file():
        return
    config = json.loads(tokenizer_config_path.read_text())
    if config.get("tokenizer_class") in _V4_TOKENIZER_CLASSES:
        config["tokenizer_class"] = _V4_TOKENIZER_CLASSES[config["tokenizer_class"]]
        tokenizer_config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _replace(staging: Path, out: Path) -> None:
    """Move `staging` to `out`; a previous `out` is set aside first and put back if the move fails."""
    if not out.exists():
        os.replace(staging, out)
        return
    aside = _sibling(out, "previous")
    os.replace(out, aside)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def staged_output(out_dir: str | os.PathLike, overwrite: bool = False,
                  inputs: tuple[str | os.PathLike, ...] = ()) -> Iterator[Path]:
    """A fresh staging folder next to `out_dir`, moved into place when the block ends, removed if it fails.

    `out_dir` is checked first (`check_output_dir`), and leftovers of killed runs are cleaned up.
    SIGINT/SIGTERM included, nothing half-written stays behind.
    """
    out = check_output_dir(out_dir, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(out.parent)
    staging = _sibling(out, "staging")
    try:
        yield staging
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Saved %s", out)


def finish_checkpoint(folder: Path, config, tokenizer=None, card_writer: Callable[..., object] | None = None,
                      model_name: str | None = None) -> None:
    """What every checkpoint gets after its weights: RoPE keys for 4.x, the tokenizer, the model card."""
    add_v4_rope_keys(folder / "config.json")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
        add_v4_tokenizer_class(folder / "tokenizer_config.json")
    if card_writer is not None and getattr(config, "flatten", None):
        card_writer(folder, model_name=model_name)


def save_compressed(model: PreTrainedModel, out_dir: str | os.PathLike, tokenizer=None, overwrite: bool = False,
                    card_writer: Callable[..., object] | None = None, max_shard_size: str | int = "5GB") -> Path:
    """Save a compressed model (and tokenizer, and its model card) to `out_dir`, all or nothing.

    A model of the per-layer `Flattened*` classes is saved with its modeling files and an `auto_map`,
    so it loads with `trust_remote_code=True` where flatten-hf is not installed; a stock-class model
    is saved as a plain checkpoint of its stock class (the merge plan still in `config.json`). Weights are
    safetensors, sharded above `max_shard_size` (the Hub's recommended 5GB by default).

    `card_writer(folder, model_name=...)`, e.g. `flatten_hf.write_card`, runs on the staged folder of
    a model with a merge plan, so the card lands with the weights or not at all. It is passed in, not
    imported, because the card reads checkpoints and this module must not depend on it.
    """
    with staged_output(out_dir, overwrite) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        finish_checkpoint(staging, model.config, tokenizer, card_writer, Path(out_dir).expanduser().resolve().name)
    return Path(out_dir).expanduser().resolve()
