"""Benchmark depth-compression methods side by side and print a Markdown table.

Each (method, ratio) runs in a fresh process so that its peak memory is its own. Columns: decoder
layers, parameters, perplexity on the evaluation part of the text source (never seen during
calibration), compression wall time, peak resident memory of the compressing process, and prefill
latency (batch 1) of the compressed model.

Example (the README table):
    python benchmarks/depth_compression.py --model smollm2-135m --methods shortgpt --ratios 0.1 0.2 0.3

With --recover-steps N every compressed model is also recovered (`flatten_hf.recover`: hierarchical
distillation from the dense model, LoRA r=8, lr 1e-4, N steps of --recover-batch x --recover-seq-len
tokens of the calibration text) and measured again: the "+recovery" columns.

A method variant is written `name:key=value,key=value`, e.g. `flattengpt:width_policy=global`;
append `@RATIO` to run it at that ratio only, e.g. `flattengpt:similarity=iterative@0.2`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

import torch


def parse_method(spec: str) -> tuple[str, dict]:
    name, _, opts = spec.partition(":")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        try:
            kwargs[key] = json.loads(value)  # numbers, true/false, lists
        except ValueError:
            kwargs[key] = value  # bare words such as `global`
    return name, kwargs


def params_of(model) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def prefill_ms(model, seq_len: int = 512, repeats: int = 5) -> float:
    ids = torch.randint(100, 1000, (1, seq_len))
    model(ids, use_cache=False)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(ids, use_cache=False)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def evaluate(model, tokenizer, args) -> float:
    from flatten_hf import perplexity
    from flatten_hf.data import evaluation_ids

    return perplexity(model, evaluation_ids(tokenizer, args.source), args.eval_seq_len, max_windows=args.eval_windows)


def run_one(spec: str, ratio: float, args: argparse.Namespace, queue: mp.Queue) -> None:
    """Compress, measure, and report one row (runs in a child process)."""
    import flatten_hf
    from flatten_hf.checkpoint import base_model_id

    torch.set_num_threads(args.threads)
    model, tokenizer = flatten_hf.load_model(args.model, args.dtype)
    name, kwargs = parse_method(spec)
    calibration = flatten_hf.CalibrationConfig(args.source, args.calib_samples, args.calib_seq_len, args.batch_size)
    start = time.perf_counter()
    compressed = flatten_hf.compress(model, name, tokenizer=tokenizer, calibration=calibration, ratio=ratio,
                                     base_model=base_model_id(args.model), **kwargs)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"method": spec, "ratio": ratio, "layers": compressed.config.num_hidden_layers,
           "params": params_of(compressed), "ppl": evaluate(compressed, tokenizer, args),
           "compress_s": seconds, "peak_rss_mb": peak, "prefill_ms": prefill_ms(compressed)}
    if args.recover_steps:
        config = flatten_hf.RecoveryConfig(steps=args.recover_steps, batch_size=args.recover_batch,
                                           seq_len=args.recover_seq_len, source=args.source)
        start = time.perf_counter()
        recovered = flatten_hf.recover(compressed, model, tokenizer=tokenizer, config=config)
        row.update(recover_s=time.perf_counter() - start, ppl_recovered=evaluate(recovered, tokenizer, args),
                   recover_tokens=config.steps * config.batch_size * config.seq_len)
    queue.put(row)


def run_dense(args: argparse.Namespace, queue: mp.Queue) -> None:
    import flatten_hf
    from flatten_hf.data import calibration_ids

    torch.set_num_threads(args.threads)
    model, tokenizer = flatten_hf.load_model(args.model, args.dtype)
    ids = calibration_ids(tokenizer, args.source, args.calib_samples, args.calib_seq_len)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in ids.split(args.batch_size):
            model.model(input_ids=batch, use_cache=False)  # the decoder stack, as the methods run it
    forward_s = time.perf_counter() - start
    queue.put({"method": "dense", "ratio": 0.0, "layers": model.config.num_hidden_layers, "params": params_of(model),
               "ppl": evaluate(model, tokenizer, args), "compress_s": 0.0, "forward_s": forward_s,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "prefill_ms": prefill_ms(model)})


def in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def print_table(rows: list[dict], args: dict) -> None:
    """The Markdown table of a benchmark run (also used by --render on a saved JSON)."""
    dense = rows[0]
    windows = f"{args['eval_windows']} windows" if args["eval_windows"] else "all windows"
    print(f"\n{args['model']}: perplexity on {args['source']} evaluation text (seq_len {args['eval_seq_len']}, {windows}); "
          f"calibration {args['calib_samples']} x {args['calib_seq_len']} tokens; {args['threads']} CPU threads, "
          f"{args['dtype']}\n")
    recovered = any("ppl_recovered" in r for r in rows)
    extra = " ppl +recovery | recovery (s) |" if recovered else ""
    print(f"| method | ratio | layers | params (M) | ppl | ppl increase | compress (s) | x dense fwd | peak RSS (GB) | "
          f"prefill 512 (ms) |{extra}")
    print("|---|---|---|---|---|---|---|---|---|---|" + "---|---|" * recovered)
    for r in rows:
        increase = r["ppl"] - dense["ppl"]
        cells = f" {r['ppl_recovered']:.2f} | {r['recover_s']:.0f} |" if "ppl_recovered" in r else " | |" * recovered
        print(f"| {r['method']} | {r['ratio']:.1f} | {r['layers']} | {r['params'] / 1e6:.1f} | {r['ppl']:.2f} | "
              f"{increase:+.2f} | {r['compress_s']:.1f} | {r['compress_s'] / dense['forward_s']:.2f} | "
              f"{r['peak_rss_mb'] / 1024:.2f} | {r['prefill_ms']:.0f} |{cells}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", nargs="+", default=["shortgpt"])
    p.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    p.add_argument("--source", default="wikipedia")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=None, help="limit the evaluation windows (default: all)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--recover-steps", type=int, default=0, help="also recover every compressed model (0: off)")
    p.add_argument("--recover-batch", type=int, default=2, help="sequences per recovery step (default 2)")
    p.add_argument("--recover-seq-len", type=int, default=128, help="tokens per recovery sequence (default 128)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--render", default=None, metavar="JSON", help="print the table of a saved run and exit")
    args = p.parse_args()
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        print_table(saved["rows"], saved["args"])
        return

    rows = [in_child(run_dense, args)]
    dense = rows[0]
    print(f"dense: ppl {dense['ppl']:.2f}, decoder forward over the calibration data {dense['forward_s']:.1f} s", flush=True)
    for ratio in args.ratios:
        for spec in args.methods:
            spec, _, only = spec.partition("@")
            if only and float(only) != ratio:
                continue
            rows.append(in_child(run_one, spec, ratio, args))
            print(f"row {json.dumps(rows[-1])}", flush=True)  # each row as soon as it is measured
    print_table(rows, vars(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
