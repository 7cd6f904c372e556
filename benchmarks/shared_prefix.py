"""Zero-shot scoring with lm-eval's own HF backend against the shared-prefix scorer: time and agreement.

For each model and task, the same documents are scored twice (`zero_shot(..., shared_prefix=False/True)`):
the wall time of each, the headline accuracy of each (acc_norm where the task has it), how many
documents' scores differ, and the largest difference of a choice's log-likelihood. Prints a Markdown
table (one JSON row per model and task as it goes; `--json` appends them to a file).

    python benchmarks/shared_prefix.py smollm2-135m --limit 200 --dtype bfloat16
    python benchmarks/shared_prefix.py qwen2.5-coder-0.5b --limit 100 --dtype bfloat16 --tasks hellaswag arc_easy
"""

from __future__ import annotations

import argparse
import time

from flatten_hf.checkpoint import load_model
from flatten_hf.zeroshot import TASKS, document_scores, zero_shot

from rows import emit_row  # benchmarks/rows.py: this script's folder is on sys.path


def measure(name: str, tasks: list[str], limit: int, dtype: str, batch_size: int, json_path: str | None) -> list[dict]:
    model, tokenizer = load_model(name, dtype=dtype)
    rows = []
    for task in tasks:
        row = {"model": name, "task": task, "documents": limit, "dtype": dtype}
        runs = {}
        for label, shared in (("lm_eval", False), ("shared_prefix", True)):
            start = time.perf_counter()
            _, raw = zero_shot(model, tokenizer, [task], limit=limit, batch_size=batch_size, log_samples=True,
                               shared_prefix=shared)
            row[f"{label}_s"] = time.perf_counter() - start
            runs[label] = raw
        scores = {label: document_scores(raw)[task] for label, raw in runs.items()}
        for label, per_doc in scores.items():
            row[f"{label}_acc"] = 100 * sum(per_doc.values()) / len(per_doc)
        row["documents_differing"] = sum(scores["lm_eval"][d] != scores["shared_prefix"][d] for d in scores["lm_eval"])
        pairs = zip(runs["lm_eval"]["samples"][task], runs["shared_prefix"]["samples"][task])
        row["max_loglik_diff"] = max(abs(a[0] - b[0]) for x, y in pairs
                                     for a, b in zip(x["filtered_resps"], y["filtered_resps"]))
        rows.append(row)
        emit_row(row, json_path)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | task | docs | dtype | lm-eval (s) | shared prefix (s) | speed-up | acc lm-eval | acc shared "
             "| docs differing | max log-lik diff |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['task']} | {r['documents']} | {r['dtype']} | {r['lm_eval_s']:.1f} | "
                     f"{r['shared_prefix_s']:.1f} | {r['lm_eval_s'] / r['shared_prefix_s']:.2f}x | "
                     f"{r['lm_eval_acc']:.2f} | {r['shared_prefix_acc']:.2f} | {r['documents_differing']} | "
                     f"{r['max_loglik_diff']:.2e} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="checkpoint folders or asset names")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="tasks (default: all five)")
    p.add_argument("--limit", type=int, default=200, help="first N documents of each task (default 200)")
    p.add_argument("--dtype", default="bfloat16", help="dtype the models run in (default bfloat16)")
    p.add_argument("--batch-size", type=int, default=32, help="requests per forward pass (default 32)")
    p.add_argument("--json", default=None, help="append each row to this JSON-lines file")
    args = p.parse_args()
    rows = [row for name in args.models
            for row in measure(name, args.tasks, args.limit, args.dtype, args.batch_size, args.json)]
    print(table(rows))


if __name__ == "__main__":
    main()
