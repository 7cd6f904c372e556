"""Loading models by name and saving compressed checkpoints atomically.

A model argument is an offline asset name (`smollm2-135m`, the default, or `qwen2.5-coder-0.5b`), a
local checkpoint directory, or a Hub id (for users with network). Saving writes into a temporary
sibling directory and renames it into place, so a failure never leaves a half-written output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .assets import ASSETS, DEFAULT_MODEL_ASSET, require_asset

logger = logging.getLogger(__name__)

# Where the offline assets come from upstream, recorded as `base_model` in merge plans and cards.
ASSET_HUB_IDS = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "qwen2.5-coder-0.5b": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
}


def asset_name_of(model_id: str) -> str:
    """The offline asset name of an upstream Hub id (e.g. for commands that rebuild a checkpoint), else the id."""
    return {hub: name for name, hub in ASSET_HUB_IDS.items()}.get(model_id, model_id)


def resolve_model_path(model: str | None) -> str:
    """Map an asset name (or None, the embedded default) to its cache directory; pass anything else through."""
    name = model or DEFAULT_MODEL_ASSET
    if name in ASSETS and name in ASSET_HUB_IDS:
        return str(require_asset(name))
    return name


def base_model_id(model: str | None) -> str:
    """A human-meaningful id of the model a user asked for (the upstream Hub id for offline assets)."""
    name = model or DEFAULT_MODEL_ASSET
    return ASSET_HUB_IDS.get(name, name)


def load_model(model: str | None = None, dtype: str | torch.dtype = "float32",
               device: str | None = None) -> tuple[PreTrainedModel, object]:
    """Load a causal LM and its tokenizer (default: the embedded SmolLM2-135M)."""
    path = resolve_model_path(model)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    logger.info("Loading %s (%s)", path, dtype)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if device:
        lm.to(device)
    return lm.eval(), tokenizer


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail early, before any compute, when `out_dir` would be clobbered without permission."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass overwrite=True (--overwrite).")
    return out


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


def save_compressed(model: PreTrainedModel, out_dir: str | os.PathLike, tokenizer=None, overwrite: bool = False,
                    card: bool = True, max_shard_size: str | int = "5GB") -> Path:
    """Save a compressed model (and tokenizer, and its model card) to `out_dir`, all or nothing.

    A model of the per-layer `Flattened*` classes is saved with its modeling files and an `auto_map`,
    so it loads with `trust_remote_code=True` where flatten-hf is not installed; a stock-class model
    is saved as a plain LLaMA/Qwen2 checkpoint (the merge plan still in `config.json`). Weights are
    safetensors, sharded above `max_shard_size` (the Hub's recommended 5GB by default). With `card`,
    `README.md` is the rendered model card (see `flatten_hf.card`) of a model with a merge plan.
    """
    out = check_output_dir(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        add_v4_rope_keys(staging / "config.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if card and getattr(model.config, "flatten", None):
            from .card import write_card

            write_card(staging, model_name=out.name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Saved %s", out)
    return out
