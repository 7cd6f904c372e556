"""How much does the scoring dtype move zero-shot accuracy? The same model, scored in bfloat16 and in float32.

The report's full-task rows were scored in bfloat16 (with lm-eval's HFLM) on a machine with AVX-512; later
runs on a machine without it score in float32 (bfloat16 is emulated there, 6x slower), so a new float32
row may end up next to bfloat16 rivals. This measures what that mixing can do: a pure-removal model
(ShortGPT, or the dense model: no refit, so its weights depend only on which layers it keeps) that was
scored both ways, in float32 on `benchmarks/generalization.py`'s shuffled samples and in bfloat16 on the full
tasks (`flatten-hf eval --json`). It prints, per sample, the float32 average minus the bfloat16 one on the
same documents with the paired standard error, and how many documents changed their answer.

Usage:
    python benchmarks/dtype_effect.py runs/p03.jsonl:2=docs/report/eval/smollm2-shortgpt-0.3.json \
        runs/p02.jsonl:3=docs/report/eval/smollm2-shortgpt-0.2.json
"""

from __future__ import annotations

import argparse
import json

from flatten_hf.zeroshot import paired_difference, unpack_scores

from generalization import row_documents


def compare(results: str, row: int, eval_json: str) -> list[str]:
    """Table lines for one pair: generalization row `row` (1-based) of `results` against `eval_json`."""
    record = [json.loads(line) for line in open(results)][row - 1]
    model = json.load(open(eval_json))["models"][0]
    if "documents" not in model:
        raise SystemExit(f"{eval_json} kept no per-document scores; re-run `flatten-hf eval` (it keeps them now).")
    groups = record.get("plan_groups")
    if groups != model["plan"]["merge_plan"] or any(len(g) > 1 for g in groups):
        raise SystemExit(f"row {row} of {results} and {eval_json} are not the same pure-removal model (kept layers "
                         f"{groups} vs {model['plan']['merge_plan']}): only such a model is the same in both runs.")
    full = unpack_scores(model["documents"])
    lines = []
    for split in ("validation", "test", "both"):
        fp32 = row_documents(record, split)
        if fp32 is None:
            continue
        bf16 = {task: {i: full[task][i] for i in docs} for task, docs in fp32.items()}
        d = paired_difference(fp32, bf16)
        changed = sum(fp32[t][i] != bf16[t][i] for t in fp32 for i in fp32[t])
        lines.append(f"| {model['name']} | {split} | {d.documents} | {changed} | "
                     f"{100 * d.difference:+.2f} (± {100 * d.stderr:.2f}) |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", metavar="RESULTS:ROW=EVAL_JSON",
                   help="a generalization results file, its 1-based row, and the `flatten-hf eval --json` file of "
                        "the same model")
    args = p.parse_args()
    print("| model | sample | documents | answers changed | float32 minus bfloat16 (± paired se) |")
    print("|---|---|---|---|---|")
    for pair in args.pairs:
        left, _, eval_json = pair.partition("=")
        results, _, row = left.rpartition(":")
        if not (results and row.isdigit() and eval_json):
            raise SystemExit(f"{pair!r}: expected RESULTS:ROW=EVAL_JSON, e.g. runs/p03.jsonl:2=docs/report/eval/x.json")
        print("\n".join(compare(results, int(row), eval_json)))


if __name__ == "__main__":
    main()
