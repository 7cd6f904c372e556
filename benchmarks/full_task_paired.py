"""Full-task paired differences between methods, on every document and on the documents nothing was chosen on.

`flatten-hf eval --json` keeps each document's score, and `flatten-hf report` prints every model's average
minus a reference method's at the same ratio over all documents. The defaults being compared were chosen
on the shuffled *validation* sample of `benchmarks/generalization.py` (positions [0, N) of a seeded random
order of each task's documents, N = 300 for SmolLM2-135M), which is part of the full tasks; this script
prints the same differences twice: over every document, and over the documents outside that sample
(`--exclude-shuffled N`), which no choice has seen.

Usage:
    python benchmarks/full_task_paired.py docs/report/eval/smollm2-*-0.2*.json --reference flattengpt
"""

from __future__ import annotations

import argparse

from flatten_hf.evaluation import EvalResult
from flatten_hf.report import Row, differing_settings, display_name, label_of, load_results, merge_results
from flatten_hf.zeroshot import PairedDifference, paired_difference, sample_documents, unpack_scores

TASK_LABELS = {"piqa": "PIQA", "hellaswag": "HS", "winogrande": "WG", "arc_easy": "ARC-e", "arc_challenge": "ARC-c"}


def without(scores: dict[str, dict[int, float]], excluded: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """`scores` less the documents listed in `excluded`, task by task."""
    dropped = {task: set(ids) for task, ids in excluded.items()}
    return {task: {i: v for i, v in docs.items() if i not in dropped.get(task, set())}
            for task, docs in scores.items()}


def merged(paths: list[str]) -> tuple[dict, list]:
    """Every file's models, whatever their settings; the settings that differ are printed, not refused."""
    loaded = [load_results(path) for path in paths]
    keys = {k for a, _ in loaded for b, _ in loaded for k in differing_settings(a, b)}
    for key in sorted(keys):
        names: dict[str, list[str]] = {}
        for settings, models in loaded:
            names.setdefault(str(settings.get(key)), []).extend(display_name(m["name"]) for m in models)
        print(f"(settings differ: {key}: " + "; ".join(f"{v} for {', '.join(n)}" for v, n in names.items()) + ")")
    limits = {s.get("limit") for s, _ in loaded}
    return {"limit": limits.pop() if len(limits) == 1 else None}, [m for _, models in loaded for m in models]


def cell(d: PairedDifference) -> str:
    return f"{100 * d.difference:+.2f} (± {100 * d.stderr:.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_json", nargs="+", help="files written by `flatten-hf eval --json` (full tasks, no --limit)")
    p.add_argument("--reference", default="flattengpt", help="method label of the reference (report's method column)")
    p.add_argument("--exclude-shuffled", type=int, default=300, metavar="N",
                   help="leave out positions [0, N) of each task's seeded shuffled order (seed 0), the validation "
                        "sample defaults were chosen on (default 300; 0 keeps every document)")
    p.add_argument("--mixed-settings", action="store_true",
                   help="compare files measured under different settings (e.g. a float32 row against bfloat16 ones: "
                        "`benchmarks/dtype_effect.py` measures what that can move); the differing settings are printed")
    args = p.parse_args()
    try:
        settings, models = merged(args.eval_json) if args.mixed_settings else merge_results(args.eval_json)
    except ValueError as e:  # files that are not eval JSON, or measured under other settings
        raise SystemExit(f"{e}{'' if args.mixed_settings else ' (or compare them anyway with --mixed-settings)'}")
    if settings.get("limit") != "none (full tasks)":
        raise SystemExit(f"these results were measured with limit {settings.get('limit')!r}: the full tasks are needed.")
    rows = [Row(r, *label_of(r)) for r in (EvalResult.from_dict(m) for m in models) if r.documents]
    missing = [display_name(m["name"]) for m in models if not m.get("documents")]
    if missing:
        print(f"(no per-document scores, left out: {', '.join(missing)})")
    references = {r.ratio: r for r in rows if r.method == args.reference}
    if not references:
        raise SystemExit(f"no model labelled {args.reference!r} kept its per-document scores; "
                         f"labels: {', '.join(sorted({r.method for r in rows}))}.")
    sizes = {task: len(bits) for task, bits in next(iter(references.values())).result.documents.items()}
    excluded = sample_documents(sizes, 0, args.exclude_shuffled)
    held_out = sum(sizes.values()) - sum(len(v) for v in excluded.values())
    print(f"average minus {args.reference}'s at the same ratio, in points (± paired se); held out: the "
          f"{held_out} documents outside positions [0, {args.exclude_shuffled}) of each task's shuffled order")
    print("| model | method | ratio | avg | all documents | held out | " + " | ".join(TASK_LABELS.values())
          + " (held out) |")
    print("|" + "---|" * (6 + len(TASK_LABELS)))
    for row in sorted(rows, key=lambda r: (r.ratio, r.method)):
        ref = references.get(row.ratio)
        if ref is None or row is ref:
            continue
        a, b = unpack_scores(row.result.documents), unpack_scores(ref.result.documents)
        everything, kept = paired_difference(a, b), paired_difference(without(a, excluded), without(b, excluded))
        tasks = [f"{100 * kept.per_task[t]:+.2f}" if t in kept.per_task else "-" for t in TASK_LABELS]
        print(f"| {display_name(row.result.name)} | {row.method} | {row.ratio:.2f} | "
              f"{100 * row.result.zero_shot_average:.2f} | {cell(everything)} | {cell(kept)} | " + " | ".join(tasks) + " |")
    for ref in references.values():
        print(f"reference: {display_name(ref.result.name)} ({ref.method}, ratio {ref.ratio:.2f}), "
              f"average {100 * ref.result.zero_shot_average:.2f}")


if __name__ == "__main__":
    main()
