"""Publishing a compressed checkpoint to the Hugging Face Hub, in one commit.

What goes up is exactly what a user needs to load and trust the model, and nothing else: the
safetensors weights (and their shard index), `config.json` with the merge plan, the modeling files
named by its `auto_map` when the checkpoint has per-layer widths, the tokenizer and generation
config, the model card (`README.md`) and `eval_results.json`. Pickle weights are refused.

`HF_ENDPOINT` and `HF_TOKEN` are respected as everywhere in `huggingface_hub`; the endpoint is
checked (and the token verified) before any upload, so a missing token or network fails at once
with a message that says what to do.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError

logger = logging.getLogger(__name__)

# Files of a checkpoint folder that belong on the Hub (besides *.safetensors and the auto_map modules).
HUB_FILES = (
    "config.json", "generation_config.json", "model.safetensors.index.json", "README.md", "eval_results.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "vocab.json", "merges.txt", "tokenizer.model",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# The Hub rejects single files above 50 GB; checkpoints are sharded well below that (5GB by default).
MAX_FILE_BYTES = 50 * 1000**3
CARD_PLACEHOLDER = "your-username/"


def files_to_upload(folder: str | os.PathLike) -> list[Path]:
    """The files of `folder` that a push uploads, after checking that they make a loadable checkpoint."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; push a folder written by `flatten-hf compress`.")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{folder} holds pickle weights ({', '.join(pickles)}); flatten-hf pushes safetensors only. "
                         "Re-save with `model.save_pretrained(dir)` (safetensors is the default) and remove them.")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{folder} has no *.safetensors weights.")
    too_big = [p.name for p in weights if p.stat().st_size > MAX_FILE_BYTES]
    if too_big:
        raise ValueError(f"{', '.join(too_big)} exceed the Hub's 50 GB file limit; re-save with a smaller "
                         "max_shard_size (e.g. `save_compressed(..., max_shard_size='5GB')`).")
    config = json.loads((folder / "config.json").read_text())
    modules = {ref.split("--")[-1].split(".")[0] + ".py" for ref in config.get("auto_map", {}).values()}
    missing = sorted(m for m in modules if not (folder / m).is_file())
    if missing:
        raise FileNotFoundError(f"config.json's auto_map needs {', '.join(missing)}, which {folder} lacks; re-save "
                                "the model with flatten-hf so that its modeling files are copied next to the weights.")
    extra = [folder / name for name in (*HUB_FILES, *sorted(modules)) if (folder / name).is_file()]
    return weights + extra


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Upload a compressed checkpoint folder to `repo_id` in a single commit.

    Args:
        folder: a folder written by `flatten-hf compress` (or `save_compressed`).
        repo_id: "user/name" or "org/name"; created if it does not exist.
        private: create the repository as private (an existing repository keeps its visibility).
        revision: branch to commit to (created from main if needed); default main.
        create_pr: open a pull request with the commit instead of committing to the branch.
        token: a write token; default `HF_TOKEN` or the token saved by `hf auth login`.
        commit_message: default "Upload <name> compressed with flatten-hf (<method>)".
        endpoint: the Hub URL; default `HF_ENDPOINT` (https://huggingface.co).

    Returns:
        The commit's `CommitInfo` (`commit_url`, `oid`, and `pr_url` with `create_pr`).

    The model card is uploaded as written in the folder; a card still showing the placeholder repo
    id (as `compress` writes it) is re-rendered for `repo_id` on the way up, the folder untouched.
    """
    if constants.HF_HUB_OFFLINE:
        raise RuntimeError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it (and check the network).")
    files = files_to_upload(folder)
    folder = Path(folder)
    token = token or get_token()
    if not token:
        raise ValueError("No Hugging Face token: pass --token (token=...), set HF_TOKEN, or run `hf auth login`. "
                         "It needs write access to the target namespace.")
    api = HfApi(endpoint=endpoint or constants.ENDPOINT, token=token)
    _check_endpoint(api)
    operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=_card_bytes(folder, repo_id)
                                     if p.name == "README.md" else p) for p in files]
    if not (folder / "README.md").is_file():
        operations.append(CommitOperationAdd("README.md", _card_bytes(folder, repo_id)))
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    method = config.get("flatten", {}).get("method", "flatten-hf")
    info = api.create_commit(repo_id, operations, revision=revision, create_pr=create_pr,
                             commit_message=commit_message or f"Upload {folder.name} compressed with flatten-hf ({method})")
    logger.info("Pushed %d files to %s: %s", len(operations), repo_id, info.pr_url or info.commit_url)
    return info


def _check_endpoint(api: HfApi) -> None:
    """Fail before any upload when the Hub cannot be reached or rejects the token."""
    try:
        user = api.whoami()
    except HfHubHTTPError as e:
        raise ValueError(f"{api.endpoint} rejected the token ({e}); check HF_TOKEN / --token.") from e
    except Exception as e:  # noqa: BLE001  (the HTTP client's connection errors have no common base we can name)
        raise RuntimeError(f"Cannot reach the Hub at {api.endpoint} ({type(e).__name__}: {e}). Check the network, "
                           "or HF_ENDPOINT if you use a mirror.") from e
    logger.info("Pushing to %s as %s", api.endpoint, user.get("name"))


def _card_bytes(folder: Path, repo_id: str) -> bytes | Path:
    """The card to upload: the folder's own, unless it is missing or still shows the placeholder repo id."""
    path = folder / "README.md"
    if path.is_file() and CARD_PLACEHOLDER not in path.read_text():
        return path
    from .card import render_card

    return str(render_card(folder, repo_id=repo_id, model_name=repo_id.split("/")[-1])).encode()
