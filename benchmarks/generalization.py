"""Does a method win outside its calibration domain? The validation protocol behind issue 18's choices.

For each variant (a JSON object: `method`, the method's options, and optionally `calib_source`,
`calib_samples`, `calib_seq_len`, `then`, `recover_steps` and `quantize`), compress the model on
`--calib-samples` x 512 tokens of that source (or as many sequences of as many tokens as the variant says),
then, with `then` (another object: `method` and its options), compress the result again on the same tokens
(e.g. FlattenGPT's first merges, then plain removal of a few more layers), then, with `recover_steps`, run
`flatten_hf.recover` with its defaults for that many steps, with `quantize` (`int8` or `int4`) quantize its
linear weights with optimum-quanto as `flatten-hf eval --quantize` does, and measure, with float32 activations
(bfloat16 is emulated, and several times slower, on CPUs without AVX512-BF16):

- perplexity on the first `--windows` 512-token windows of the Wikipedia evaluation part (the default
  calibration domain) and of the LAMBADA fiction evaluation part (never used for calibration);
- lm-eval zero-shot accuracy on the first `--limit` documents of each of the five tasks. With the
  default 500 this is the first half or less of every task (PIQA 1838, HellaSwag 10042, WinoGrande
  1267, ARC-e 2376, ARC-c 1172 documents): the *validation* half on which defaults are chosen. The
  published numbers are the full tasks (`flatten-hf eval`), never this split alone.
- with `--split test`, documents [`--limit`, 2 x `--limit`) of each task instead: the held-out *test*
  split, disjoint from the validation one, scored once the defaults are fixed and never used to choose.
- with `--documents shuffled`, both splits are taken from a seeded random order of each task's documents
  instead of its file order: a task's first documents are not a sample of it (HellaSwag lists all its
  ActivityNet contexts first: its first 600 documents contain none of the WikiHow ones that make up
  68% of it, and on which depth compression costs the most).

Every zero-shot record keeps each document's score, and `--table --paired ROW` prints every row's
average minus ROW's on the same documents with the *paired* standard error: methods compressed from one
model succeed and fail on mostly the same documents, so their difference is resolved far more finely
than the two averages' error bars (about 1.25 points each at 300 documents per task) suggest.

Results are appended to `--results` (JSON lines, one per variant), so an interrupted run resumes and
variants can be added while it runs (the variants file is re-read after each one). Prints the table.

Usage:
    python benchmarks/generalization.py --variants benchmarks/variants.jsonl --results runs/gen.jsonl
    python benchmarks/generalization.py --results runs/gen.jsonl --table   # print the table only
    python benchmarks/generalization.py --results runs/gen.jsonl --table --quantized   # quantized vs float32
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import flatten_hf
from flatten_hf.compression import CalibrationConfig, calibration_data
from flatten_hf.data import evaluation_ids
from flatten_hf.quantization import WEIGHT_TYPES, quantize_weights
from flatten_hf.zeroshot import (
    TASKS,
    average,
    document_scores,
    pack_scores,
    paired_difference,
    sample_documents,
    task_sizes,
    unpack_scores,
    zero_shot,
)


def key_of(variant: dict) -> str:
    return json.dumps(variant, sort_keys=True)


def _without_quantize(key: str) -> tuple[str, str | None]:
    """A variant's key without its `quantize` option, and that option (None for float32 weights)."""
    variant = json.loads(key)
    weights = variant.pop("quantize", None)
    return key_of(variant), weights


def split_documents(documents: str, limit: int, test: bool) -> tuple[int | None, tuple[int, int] | dict | None]:
    """The zero-shot `limit` and `docs` of a split: the first `limit` documents of each task and the next
    `limit` (`first`), or the same two ranges of a seeded random order of each task (`shuffled`)."""
    if documents == "shuffled":
        return None, sample_documents(task_sizes(), limit if test else 0, 2 * limit if test else limit)
    return (None, (limit, 2 * limit)) if test else (limit, None)


def zero_shot_record(model, tokenizer, limit: int | None, docs: tuple[int, int] | dict | None = None,
                     cache: str | None = None, shared_prefix: bool = False) -> dict:
    """The five tasks' scores, their average, and each document's score (a string of 0/1 per task, in
    document order from the split's first document, or with `docs` a sample, in the order of the sample's
    sorted `doc_ids`, which the record then keeps), so that any two rows can be compared pairwise. With
    `shared_prefix` the shared-prefix scorer (`flatten_hf.shared_prefix`: in float32 every document of SmolLM2's
    and Qwen2's samples scores as with lm-eval's HFLM), which the record says."""
    scores, raw = zero_shot(model, tokenizer, limit=limit, docs=docs, batch_size=32, cache=cache, log_samples=True,
                            shared_prefix=shared_prefix)
    record = {"tasks": {s.task: round(100 * s.headline, 2) for s in scores}}
    if shared_prefix:
        record["scorer"] = "shared_prefix"
    record["avg"], record["avg_stderr"] = (round(100 * v, 2) for v in average(scores))
    record["documents"] = pack_scores(document_scores(raw))
    record["sampling"] = "shuffled" if isinstance(docs, dict) else "first"
    if isinstance(docs, dict):
        record["doc_ids"] = docs
    return record


def measure(model, tokenizer, windows: int, texts: dict,
            split: tuple[int | None, tuple[int, int] | dict | None] | None, shared_prefix: bool = False) -> dict:
    """Both perplexities and, with `split` (the `limit` and `docs` of `split_documents`), the zero-shot record."""
    row = {f"ppl_{name}": flatten_hf.perplexity(model, ids, 512, batch_size=4, max_windows=windows)
           for name, ids in texts.items()}
    if split:
        row.update(zero_shot_record(model, tokenizer, *split, shared_prefix=shared_prefix))
    return row


def _sampling(record: dict | None) -> str | None:
    """How a zero-shot record chose its documents (records from before `--documents` took the first ones)."""
    if not record or "tasks" not in record:
        return None
    return record.get("sampling", "first")


def check_sampling(args: argparse.Namespace, done: list[dict], test: bool) -> None:
    """Refuse to add rows scored on other documents than the file's rows were: rows are paired document by
    document, so one results file holds one way of choosing them (checked before any model is loaded)."""
    other = {_sampling(r.get("test") if test else r) for r in done} - {None, args.documents}
    if other:
        raise SystemExit(f"{args.results} has rows scored on the {', '.join(sorted(other))} documents of the "
                         f"{'test' if test else 'validation'} split; --documents {args.documents} needs a results "
                         "file of its own (copy its rows without their zero-shot fields).")


def score_saved(args: argparse.Namespace, done: list[dict], results_path: Path) -> None:
    """Add zero-shot scores of the validation split (or, with `--split test`, the test split) to rows
    measured earlier without them (perplexity first, accuracy later)."""
    if args.rows:
        indices = [int(i) for i in args.rows.split(",")]
    elif args.variants:
        order = [key_of(json.loads(line)) for line in Path(args.variants).read_text().splitlines() if line.strip()]
        indices = [next((i for i, r in enumerate(done) if r["key"] == key), None) for key in order]
    else:
        raise SystemExit("--zero-shot-saved needs --rows (row indices) or --variants (the variants to score).")
    test = args.split == "test"
    check_sampling(args, done, test)
    limit, docs = split_documents(args.documents, args.limit, test)
    for index in indices:
        if index is None or (done[index].get("test") if test else "tasks" in done[index]):
            continue
        key, weights = _without_quantize(done[index]["key"])  # a quantized row: its float32 row's checkpoint
        source = next((i for i, r in enumerate(done) if r["key"] == key), None)
        dense = json.loads(key)["method"] == "dense"
        if source is None and not dense:
            raise SystemExit(f"row {index} quantizes a variant that has no float32 row with a saved checkpoint; "
                             "add that variant first.")
        path = args.model if dense else str(Path(args.save_dir) / str(source))
        model, tokenizer = flatten_hf.load_model(path, dtype=torch.float32, quantize=weights)
        start = time.perf_counter()
        tag = f"{args.limit}-{2 * args.limit}" if test else str(args.limit)
        tag += "-shuffled" if args.documents == "shuffled" else ""
        tag += "-shared-prefix" if args.shared_prefix else ""
        record = zero_shot_record(model, tokenizer, limit, docs,
                                  cache=str(results_path.parent / f"lm-cache-{results_path.stem}-{index}-{tag}"),
                                  shared_prefix=args.shared_prefix)
        if test:
            done[index]["test"] = {**record, "docs": [args.limit, 2 * args.limit],
                                   "seconds": time.perf_counter() - start}
        else:
            done[index].update(record, limit=args.limit, seconds_zero_shot=time.perf_counter() - start)
        rewrite_results(results_path, done)
        print_table(done, args.split)


def rewrite_results(path: Path, rows: list[dict]) -> None:
    """Replace the results file with `rows` in one step, so an interrupted write never loses the rows it held."""
    staged = path.with_suffix(".tmp")
    staged.write_text("".join(json.dumps(r) + "\n" for r in rows))
    staged.replace(path)


def print_table(results: list[dict], split: str = "validation") -> None:
    samplings = sorted({_sampling(r.get("test") if split == "test" else r) for r in results} - {None})
    print(f"{split} split" + (f" ({', '.join(samplings)} documents)" if samplings else ""))
    print("| variant | layers | ppl wikipedia | ppl lambada | PIQA | HS | WG | ARC-e | ARC-c | avg (± se) | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if split == "test":
            if not r.get("test"):
                continue
            r = {**r, **r["test"]}
        t = r.get("tasks", {})
        cells = [t.get(k, "") for k in ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge")]
        avg = f"{r['avg']:.2f} (± {r['avg_stderr']:.2f})" if "avg" in r else ""
        print(f"| {r['key']} | {r['layers']} | {r['ppl_wikipedia']:.2f} | {r['ppl_lambada']:.2f} | "
              + " | ".join(str(c) for c in cells) + f" | {avg} | {r['seconds']:.0f} |")


def row_documents(row: dict, split: str, tasks: tuple[str, ...] = TASKS) -> dict[str, dict[int, float]] | None:
    """Each document's score by task and document id, on one split or (`both`) on the two together."""
    if split == "both":
        parts = [row_documents(row, "validation", tasks), row_documents(row, "test", tasks)]
        return None if None in parts else {t: {**parts[0][t], **parts[1][t]} for t in parts[0]}
    record = row.get("test") if split == "test" else row
    if not record or "documents" not in record:
        return None
    packed = {task: bits for task, bits in record["documents"].items() if task in tasks}
    if "doc_ids" in record:  # a shuffled sample: position i is the i-th of its sorted document indices
        return unpack_scores(packed, record["doc_ids"])
    first = record["docs"][0] if split == "test" else 0
    return {task: {first + i: v for i, v in scores.items()} for task, scores in unpack_scores(packed).items()}


def print_paired(results: list[dict], reference: int, split: str = "validation", tasks: tuple[str, ...] = TASKS) -> None:
    """Each row's average minus the reference row's, on the same documents, with the paired standard error
    (over `tasks`, by default all five)."""
    if not 0 <= reference < len(results):
        raise SystemExit(f"--paired {reference}: {len(results)} rows in --results, numbered from 0.")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"--paired-tasks {','.join(unknown)}: not among the tasks ({','.join(TASKS)}).")
    ref = row_documents(results[reference], split, tasks)
    if ref is None:
        raise SystemExit(f"row {reference} has no per-document scores on the {split} split; score it again.")
    print(f"{split} split, paired against row {reference}: {results[reference]['key']}; average over {', '.join(tasks)}")
    print("| row | variant | PIQA | HS | WG | ARC-e | ARC-c | avg difference (± paired se) | z |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(results):
        docs = row_documents(r, split, tasks)
        if docs is None or i == reference:
            continue
        d = paired_difference(docs, ref)
        cells = [f"{100 * d.per_task[t]:+.2f}" if t in d.per_task else "" for t in TASKS]
        print(f"| {i} | {r['key']} | " + " | ".join(cells) + f" | {100 * d.difference:+.2f} (± {100 * d.stderr:.2f}) "
              f"| {d.z:+.1f} |")


def _quantization_cost(row: dict, base: dict, split: str) -> dict[str, dict[int, float]] | None:
    """Per document, the quantized row's score minus the same variant's float32 score (-1, 0 or +1)."""
    docs, ref = row_documents(row, split), row_documents(base, split)
    if docs is None or ref is None:
        return None
    return {task: {i: v - ref[task][i] for i, v in scores.items() if i in ref[task]} for task, scores in docs.items()}


def print_quantized(results: list[dict], split: str = "validation") -> None:
    """Each `quantize` variant next to the same variant in float32: perplexities, zero-shot average, the
    quantization's cost on the same documents (its average minus float32's, with the paired standard error)
    and that cost minus the dense model's cost in the same weights, document by document: the *extra*
    loss of quantizing a compressed model, which says whether depth pruning and quantization compose."""
    by_key = {r["key"]: r for r in results}
    rows = [(r, *_without_quantize(r["key"])) for r in results]
    costs = {(key, weights): _quantization_cost(r, by_key[key], split)
             for r, key, weights in rows if weights and key in by_key}
    dense_cost = {weights: cost for (key, weights), cost in costs.items() if json.loads(key)["method"] == "dense"}
    quantized = {key for key, _ in costs}
    print(f"{split} split: quantized weights against the same model in float32")
    print("| variant | weights | ppl wikipedia | ppl lambada | avg | avg - float32 (± paired se) "
          "| that, minus dense's (± paired se) |")
    print("|---|---|---|---|---|---|---|")
    for r, key, weights in rows:
        if key not in quantized:
            continue
        record = r.get("test") if split == "test" else r
        cost = costs.get((key, weights))
        cells = ["", ""]
        if cost is not None:
            zero = {task: dict.fromkeys(scores, 0.0) for task, scores in cost.items()}
            d = paired_difference(cost, zero)
            cells[0] = f"{100 * d.difference:+.2f} (± {100 * d.stderr:.2f})"
            if dense_cost.get(weights) is not None and json.loads(key)["method"] != "dense":
                e = paired_difference(cost, dense_cost[weights])
                cells[1] = f"{100 * e.difference:+.2f} (± {100 * e.stderr:.2f})"
        avg = f"{record['avg']:.2f}" if record and "avg" in record else ""
        print(f"| {key} | {weights or 'float32'} | {r['ppl_wikipedia']:.2f} | {r['ppl_lambada']:.2f} | {avg} | "
              + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="asset name or checkpoint (default smollm2-135m)")
    p.add_argument("--variants", default=None, help="JSON lines, one variant per line")
    p.add_argument("--results", required=True, help="JSON lines file the results are appended to")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--windows", type=int, default=64, help="perplexity windows of 512 tokens per text")
    p.add_argument("--limit", type=int, default=500, help="documents per task (the validation half)")
    p.add_argument("--save-dir", default=None,
                   help="also save each compressed model to SAVE_DIR/<n> (e.g. for a full `flatten-hf eval` later)")
    p.add_argument("--table", action="store_true", help="print the table of --results and exit")
    p.add_argument("--paired", type=int, default=None, metavar="ROW",
                   help="with --table: each row's zero-shot average minus row ROW's, document by document, with the "
                        "paired standard error (rows scored since per-document scores were recorded)")
    p.add_argument("--quantized", action="store_true",
                   help="with --table: each variant with a `quantize` option against the same variant in float32, "
                        "paired document by document (the extra loss of quantizing it)")
    p.add_argument("--paired-tasks", default=",".join(TASKS),
                   help="with --paired: the tasks averaged (default all five; e.g. leave out winogrande, where the "
                        "dense model is at chance)")
    p.add_argument("--split", choices=("validation", "test", "both"), default="validation",
                   help="with --zero-shot-saved or --table: the first --limit documents of each task (validation, "
                        "where defaults are chosen) or the next --limit (test, held out); with --paired also both "
                        "together (twice the documents, for the final comparison only)")
    p.add_argument("--documents", choices=("first", "shuffled"), default="first",
                   help="which documents a split scores: the first --limit of each task and the next --limit (first, "
                        "the default of the earlier results files), or the same ranges of a seeded random order of each "
                        "task (shuffled: a sample of the whole task; HellaSwag's first 3,243 documents are all "
                        "ActivityNet, the other 68%% WikiHow). A results file holds one or the other")
    p.add_argument("--shared-prefix", action="store_true",
                   help="score the zero-shot tasks with the shared-prefix scorer (about 2x faster; in float32 the same "
                        "per-document scores as lm-eval's HFLM on the measured samples; recorded in each row)")
    p.add_argument("--rows", default=None, help="with --zero-shot-saved: score only these rows, in this order "
                                                "(comma-separated indices of --results)")
    p.add_argument("--zero-shot-saved", action="store_true",
                   help="score the rows of --results that have no zero-shot numbers yet, on the first --limit "
                        "documents, from their checkpoints in --save-dir (row n in SAVE_DIR/<n>; a quantized row "
                        "quantizes its float32 row's), in the order of --variants; the rows are rewritten in place")
    args = p.parse_args()
    results_path = Path(args.results)
    done = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    if args.quantized and not args.table:
        raise SystemExit("--quantized is a table of --results: add --table.")
    if args.split == "both" and not (args.table and args.paired is not None):
        raise SystemExit("--split both is for --table --paired ROW (scores are taken on one split at a time).")
    if args.table:
        for split in (("validation", "test") if args.split == "both" else (args.split,)):
            print_table(done, split)
        if args.paired is not None:
            print_paired(done, args.paired, args.split, tuple(args.paired_tasks.split(",")))
        if args.quantized:
            print_quantized(done, "validation" if args.split == "both" else args.split)
        return
    if args.zero_shot_saved:
        score_saved(args, done, results_path)
        return
    if args.limit:
        check_sampling(args, done, test=False)
    # once, not per variant: a shuffled split loads every task to count its documents
    split = split_documents(args.documents, args.limit, test=False) if args.limit else None
    model, tokenizer = flatten_hf.load_model(args.model)
    texts = {name: evaluation_ids(tokenizer, name) for name in ("wikipedia", "lambada")}
    calibration: dict[str, torch.Tensor] = {}
    while True:
        finished = {r["key"] for r in done}
        todo = [json.loads(line) for line in Path(args.variants).read_text().splitlines() if line.strip()]
        todo = [v for v in todo if key_of(v) not in finished]
        if not todo:
            break
        variant = dict(todo[0])
        start = time.perf_counter()
        method = variant.pop("method")
        weights = variant.pop("quantize", None)
        if weights not in (None, *WEIGHT_TYPES):
            raise SystemExit(f"variant {todo[0]}: quantize must be one of {', '.join(WEIGHT_TYPES)}, got {weights!r}.")
        if method == "dense":
            compressed = model
        else:
            config = CalibrationConfig(variant.pop("calib_source", "wikipedia"),
                                       variant.pop("calib_samples", args.calib_samples), variant.pop("calib_seq_len", 512))
            name = f"calibration-{config.source}-{config.num_samples}x{config.seq_len}"
            if name not in calibration:  # cached on disk: sampling from the model takes minutes on a CPU
                cached = results_path.parent / f"{name}.pt"
                if not cached.exists():
                    torch.save(calibration_data(model, tokenizer, config), cached)
                calibration[name] = torch.load(cached)
            recover_steps = variant.pop("recover_steps", 0)
            then = dict(variant.pop("then", None) or {})
            if then and "method" not in then:
                raise SystemExit(f"variant {todo[0]}: 'then' needs a 'method' (and that method's options).")
            # the config too, so that the plan records where the ids came from
            compressed = flatten_hf.compress(model, method, calibration_ids=calibration[name], calibration=config,
                                             **variant)
            if then:  # the plan keeps the first compression in its history
                compressed = flatten_hf.compress(compressed, then.pop("method"), calibration_ids=calibration[name],
                                                 calibration=config, **then)
            if recover_steps:  # distil the dense model back in (trained in place: never on tensors it shares)
                compressed = flatten_hf.recover(copy.deepcopy(compressed), model, tokenizer=tokenizer,
                                                config=flatten_hf.RecoveryConfig(steps=recover_steps))
        if weights:  # on a copy: the dense model, which every later variant starts from, may be this model or share its tensors
            compressed = quantize_weights(copy.deepcopy(compressed), weights)
        if args.save_dir and method != "dense" and not weights:
            flatten_hf.save_compressed(compressed, Path(args.save_dir) / str(len(done)), tokenizer,
                                       card_writer=flatten_hf.write_card)
        row = {"key": key_of(todo[0]), "layers": compressed.config.num_hidden_layers,
               **measure(compressed, tokenizer, args.windows, texts, split, args.shared_prefix),
               "plan_groups": compressed.config.flatten["merge_plan"] if method != "dense" else None}
        row["seconds"] = time.perf_counter() - start
        done.append(row)
        with open(results_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print_table(done)


if __name__ == "__main__":
    main()
