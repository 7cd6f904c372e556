"""Which blocks should FlattenGPT's removal step take? Block Influence against the held-out LM loss.

`--remove-fraction` (and ShortGPT) drop the blocks with the lowest Block Influence: how little a block turns
the residual stream. This prototype scores each block of the flattened model by what its removal does to the
language-model loss on calibration-domain sequences the refits never saw (the default calibration source, drawn
with another seed, without the calibration sequences), drops the `--num-remove` blocks whose single removal
raises that loss least, and scores the result like a row of `benchmarks/generalization.py` (same calibration
ids, perplexity windows and shuffled document samples), appending it to that script's `--results` file so that
`generalization.py --table --paired ROW` compares it document by document.

The library has the same rule as `--removal-score loss` (`flatten_hf.skip_loss`), measured on calibration
tokens (or with `--holdout-fraction` on batches held out of the refits) in one layer-wise pass; this script
keeps the measurement on sequences drawn apart from the calibration set, which is how row 18 was chosen.

Usage (SmolLM2, ratio 0.2 flattened then 3 blocks removed = 9 of 30 layers, as `--remove-fraction 0.33`):
    python benchmarks/removal_by_loss.py --results runs/p03.jsonl                 # rank, remove, validation
    python benchmarks/removal_by_loss.py --results runs/p03.jsonl --blocks 5,7,20 --split test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import flatten_hf
from flatten_hf.compression import CalibrationConfig, calibration_data
from flatten_hf.data import evaluation_ids

import generalization


def without_blocks(layers: torch.nn.ModuleList, removed: set[int] | list[int]) -> torch.nn.ModuleList:
    """The decoder blocks but `removed` (the same modules: nothing is copied)."""
    return torch.nn.ModuleList([layer for i, layer in enumerate(layers) if i not in removed])


@torch.no_grad()
def loss_without(model, ids: torch.Tensor, removed: set[int], batch_size: int = 4) -> float:
    """Mean next-token loss of `model` on `ids` with the decoder blocks `removed` skipped."""
    layers = model.model.layers
    model.model.layers = without_blocks(layers, removed)
    try:
        losses = [model(input_ids=ids[b:b + batch_size], labels=ids[b:b + batch_size], use_cache=False).loss.item()
                  for b in range(0, len(ids), batch_size)]
    finally:
        model.model.layers = layers
    return sum(losses) / len(losses)


def held_out_ids(model, tokenizer, calibration: torch.Tensor, rows: int, seq_len: int, seed: int) -> torch.Tensor:
    """`rows` sequences of the default source drawn with `seed`, none of them a calibration sequence."""
    seen = {tuple(r.tolist()) for r in calibration}
    drawn = calibration_data(model, tokenizer, CalibrationConfig(num_samples=2 * rows, seq_len=seq_len, seed=seed))
    return torch.stack([r for r in drawn if tuple(r.tolist()) not in seen][:rows])


def row_key(ratio: float, removed: list[int]) -> str:
    """The results row's key: what was flattened and which blocks were removed afterwards."""
    return json.dumps({"prototype": "removal by held-out loss", "ratio": ratio, "removed_blocks": removed})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="generalization.py results file the row is appended to")
    p.add_argument("--ratio", type=float, default=0.2, help="FlattenGPT's ratio before the removal (default 0.2)")
    p.add_argument("--num-remove", type=int, default=3, help="blocks removed afterwards (default 3)")
    p.add_argument("--blocks", default=None, help="comma-separated blocks to remove (skips the ranking)")
    p.add_argument("--held-out-rows", type=int, default=16, help="held-out sequences of 512 tokens (default 16)")
    p.add_argument("--seed", type=int, default=7, help="seed of the held-out draw (calibration: 0)")
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--limit", type=int, default=300, help="documents per task and split (default 300)")
    p.add_argument("--windows", type=int, default=32, help="perplexity windows of 512 tokens (default 32)")
    args = p.parse_args()
    results = Path(args.results)
    if not results.exists():
        raise SystemExit(f"{results} does not exist: give the results file of generalization.py's rows to pair with.")
    if args.split == "test" and not args.blocks:
        raise SystemExit("--split test scores the blocks chosen on validation: give them with --blocks.")
    try:
        given = sorted(int(b) for b in args.blocks.split(",")) if args.blocks else None
    except ValueError:
        raise SystemExit(f"--blocks {args.blocks!r}: give block indices separated by commas, e.g. 5,7,20.") from None
    done = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    index = None
    if args.split == "test":  # found before any compute: the validation row the test scores are added to
        index = next((i for i, r in enumerate(done) if r["key"] == row_key(args.ratio, given)), None)
        if index is None:
            raise SystemExit(f"{results} has no validation row for blocks {given}; run without --split test first.")
    start = time.perf_counter()
    model, tokenizer = flatten_hf.load_model("smollm2-135m", dtype=torch.float32)
    calibration = CalibrationConfig("wikipedia", 64, 512)
    cached = results.parent / "calibration-wikipedia-64x512.pt"
    if not cached.exists():
        torch.save(calibration_data(model, tokenizer, calibration), cached)
    ids = torch.load(cached)
    flat = flatten_hf.compress(model, "flattengpt", calibration_ids=ids, calibration=calibration, ratio=args.ratio)
    flat.eval()
    if given is not None:
        removed = given
    else:
        held_out = held_out_ids(flat, tokenizer, ids, args.held_out_rows, 512, args.seed)
        base = loss_without(flat, held_out, set())
        increase = {j: loss_without(flat, held_out, {j}) - base for j in range(1, len(flat.model.layers))}
        print("held-out loss increase per block:", {j: round(v, 4) for j, v in increase.items()})
        removed = sorted(sorted(increase, key=increase.get)[:args.num_remove])
    print("removed blocks:", removed)
    flat.model.layers = without_blocks(flat.model.layers, removed)
    flat.config.num_hidden_layers = len(flat.model.layers)
    split = generalization.split_documents("shuffled", args.limit, test=args.split == "test")
    if index is not None:
        record = generalization.zero_shot_record(flat, tokenizer, *split, shared_prefix=True)
        done[index]["test"] = {**record, "docs": [args.limit, 2 * args.limit], "seconds": time.perf_counter() - start}
    else:
        texts = {name: evaluation_ids(tokenizer, name) for name in ("wikipedia", "lambada")}
        done.append({"key": row_key(args.ratio, removed), "layers": flat.config.num_hidden_layers,
                     **generalization.measure(flat, tokenizer, args.windows, texts, split, shared_prefix=True),
                     "plan_groups": None, "seconds": time.perf_counter() - start})
    generalization.rewrite_results(results, done)
    generalization.print_table(done, args.split)


if __name__ == "__main__":
    main()
