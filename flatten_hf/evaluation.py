"""Measuring a compressed checkpoint against its base model, for the model card.

`measure_against_base` scores both models on the same held-out text (perplexity, the WikiText-2
protocol of `flatten_hf.perplexity`) and times a batch-1 prefill, then writes `eval_results.json`
into the checkpoint folder; `flatten-hf card` turns that file into the card's evaluation table and
its `model-index` metadata.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel

from .card import EVAL_RESULTS_FILE
from .checkpoint import ASSET_HUB_IDS, load_model
from .data import evaluation_ids
from .perplexity import perplexity

logger = logging.getLogger(__name__)

# What each text source is called in `model-index` metadata: (dataset type, dataset name, split).
EVAL_DATASETS = {
    "wikipedia": ("google/boolq", "Wikipedia passages (BoolQ, held-out part)", "validation"),
    "wikitext2": ("Salesforce/wikitext", "WikiText-2 (raw)", "test"),
}


@torch.no_grad()
def prefill_latency_ms(model: PreTrainedModel, seq_len: int = 512, repeats: int = 5) -> float:
    """Median wall time of one batch-1 forward pass over `seq_len` tokens, after one warm-up pass."""
    device = next(model.parameters()).device
    ids = torch.randint(100, 1000, (1, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(ids, use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first pass is the warm-up
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


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
    base_name = base_model or {hub: name for name, hub in ASSET_HUB_IDS.items()}.get(plan["base_model"],
                                                                                     plan["base_model"])
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
                        "prefill_ms": prefill_latency_ms(model, seq_len)},
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
