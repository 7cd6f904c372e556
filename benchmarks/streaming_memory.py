"""Peak memory and time of `flatten-hf compress`, streamed (the default) against in memory; prints a Markdown table.

Every compression runs in a fresh process (`flatten-hf compress ...`), whose peak resident set size
is read from the kernel when it exits (`os.wait4`), so each number is that run's own.

Synthetic checkpoints (random LLaMA weights, written shard by shard by this script, never held in
memory; SmolLM2's tokenizer, so that the calibration text is real):

    # memory against depth at one width (the README's table)
    python benchmarks/streaming_memory.py synthetic --layers 8 16 32 64 --methods shortgpt flattengpt \\
        --in-memory-layers 8 32
    # a Llama-3-8B-shaped checkpoint (about 16 GB in bf16) on a 24 GB machine
    python benchmarks/streaming_memory.py synthetic --preset llama-3-8b --layers 32 --methods shortgpt \\
        --dtype bfloat16

Real checkpoints (offline assets), streamed and in memory, same settings:

    python benchmarks/streaming_memory.py models --models smollm2-135m qwen2.5-coder-0.5b --methods flattengpt \\
        --ratio 0.2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from flatten_hf.bench import folder_bytes

PRESETS = {  # hidden, intermediate, heads, key/value heads, vocabulary
    "small": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_key_value_heads=4,
                  vocab_size=49152),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                       vocab_size=128256),
}


def write_synthetic(folder: Path, preset: str, layers: int, dtype: torch.dtype, seed: int = 0) -> Path:
    """A random-weight LLaMA checkpoint of `layers` decoder layers, written one tensor group at a time."""
    from transformers import AutoTokenizer, LlamaConfig

    from flatten_hf.checkpoint import resolve_model_path
    from flatten_hf.shard_writer import ShardWriter

    if (folder / "config.json").is_file():
        return folder
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config = LlamaConfig(num_hidden_layers=layers, tie_word_embeddings=False, max_position_embeddings=4096,
                         rope_theta=500000.0, **PRESETS[preset])
    config.dtype = dtype
    config.save_pretrained(staging)
    AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m")).save_pretrained(staging)
    gen = torch.Generator().manual_seed(seed)
    d, m, v = config.hidden_size, config.intermediate_size, config.vocab_size
    hd = d // config.num_attention_heads
    kv = config.num_key_value_heads * hd

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    writer = ShardWriter(staging, "2GB")
    writer.add("model.embed_tokens.weight", rand(v, d, scale=0.02))
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (d, d)), ("self_attn.k_proj", (kv, d)), ("self_attn.v_proj", (kv, d)),
                            ("self_attn.o_proj", (d, d)), ("mlp.gate_proj", (m, d)), ("mlp.up_proj", (m, d)),
                            ("mlp.down_proj", (d, m))):
            writer.add(p + name + ".weight", rand(*shape, scale=shape[1] ** -0.5))
        writer.add(p + "input_layernorm.weight", torch.ones(d, dtype=dtype))
        writer.add(p + "post_attention_layernorm.weight", torch.ones(d, dtype=dtype))
        writer.boundary()
    writer.add("model.norm.weight", torch.ones(d, dtype=dtype))
    writer.add("lm_head.weight", rand(v, d, scale=d ** -0.5))
    writer.close()
    staging.rename(folder)
    return folder


def folder_gb(folder: Path) -> float:
    return (folder_bytes(folder) or 0) / 2**30


def _popen_rss(cmd: list[str]) -> tuple[int, str, float]:
    """Run `cmd`; its exit status, its stderr and its peak RSS in GiB (from the kernel's accounting)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, stderr, usage.ru_maxrss / 2**20


def measure(model: str, method: str, ratio: float, out: Path, args: argparse.Namespace, in_memory: bool) -> dict:
    cmd = [sys.executable, "-m", "flatten_hf.cli", "-q", "compress", model, "--method", method, "--ratio", str(ratio),
           "--out", str(out), "--overwrite", "--calib-samples", str(args.calib_samples), "--seq-len", str(args.seq_len),
           "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--no-card"]
    if in_memory:
        cmd.append("--in-memory")
    cmd += shlex.split(args.compress_args)
    start = time.perf_counter()
    code, stderr, rss = _popen_rss(cmd)
    wall = time.perf_counter() - start
    if code:
        lines = stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {code}", "wall_s": wall, "peak_rss_gib": rss}
    from flatten_hf.plan import MergePlan

    plan = MergePlan.from_dict(json.loads((out / "config.json").read_text())["flatten"])
    return {"peak_rss_gib": rss, "wall_s": wall, "groups": plan.groups}


def table(rows: list[dict]) -> str:
    head = ["checkpoint", "layers", "on disk (GiB)", "method", "path", "largest group", "peak RSS (GiB)", "wall (s)",
            "s / layer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["checkpoint"], str(r["layers"]), f"{r['disk_gib']:.2f}", r["method"], r["path"]]
        if "error" in r:
            cells += ["", f"failed: {r['error'][:60]}", f"{r['wall_s']:.0f}", ""]
        else:
            cells += [str(max(len(g) for g in r["groups"])), f"{r['peak_rss_gib']:.2f}", f"{r['wall_s']:.1f}",
                      f"{r['wall_s'] / r['layers']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("synthetic", "models"))
    p.add_argument("--layers", type=int, nargs="+", default=[8, 16, 32, 64], help="synthetic: depths")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="synthetic: the width (default small: "
                   "hidden 1024, intermediate 4096)")
    p.add_argument("--weights-dtype", default="bfloat16", help="synthetic: dtype on disk (default bfloat16)")
    p.add_argument("--in-memory-layers", type=int, nargs="*", default=[],
                   help="synthetic: depths also compressed with --in-memory, for comparison")
    p.add_argument("--models", nargs="+", default=["smollm2-135m"], help="models: checkpoints or asset names")
    p.add_argument("--methods", nargs="+", default=["shortgpt", "flattengpt"])
    p.add_argument("--ratio", type=float, default=0.25)
    p.add_argument("--calib-samples", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dtype", default="float32", help="compute dtype (compress --dtype)")
    p.add_argument("--compress-args", default="", help="more `compress` flags, e.g. '--gram-dtype float32'")
    p.add_argument("--work", default=None, help="where checkpoints are written (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also append the rows to this JSON-lines file")
    args = p.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="flatten-hf-streaming-"))
    work.mkdir(parents=True, exist_ok=True)
    jobs = []  # (checkpoint label, folder or name, layers, disk GiB, in_memory)
    if args.kind == "synthetic":
        for layers in args.layers:
            folder = write_synthetic(work / f"{args.preset}-{layers}L", args.preset, layers,
                                     getattr(torch, args.weights_dtype))
            for in_memory in (False, True) if layers in args.in_memory_layers else (False,):
                jobs.append((f"random {args.preset}", str(folder), layers, folder_gb(folder), in_memory))
    else:
        from transformers import AutoConfig

        from flatten_hf.checkpoint import resolve_model_path

        for name in args.models:
            folder = Path(resolve_model_path(name))
            layers = AutoConfig.from_pretrained(folder).num_hidden_layers
            for in_memory in (False, True):
                jobs.append((name, str(folder), layers, folder_gb(folder), in_memory))
    rows = []
    for label, folder, layers, disk, in_memory in jobs:
        for method in args.methods:
            out = work / "out"
            result = measure(folder, method, args.ratio, out, args, in_memory)
            row = {"checkpoint": label, "layers": layers, "disk_gib": disk, "method": method,
                   "path": "in memory" if in_memory else "streamed", "ratio": args.ratio, "dtype": args.dtype,
                   "compress_args": args.compress_args,
                   "calibration": f"{args.calib_samples}x{args.seq_len}", **result}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "groups"}), file=sys.stderr, flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
            shutil.rmtree(out, ignore_errors=True)
    # The same merge plan, streamed or in memory, on the same weights:
    for label, layers, method in {(r["checkpoint"], r["layers"], r["method"]) for r in rows}:
        plans = [r.get("groups") for r in rows if (r["checkpoint"], r["layers"], r["method"]) == (label, layers, method)]
        if len(plans) == 2 and None not in plans and plans[0] != plans[1]:
            print(f"warning: {label} {layers}L {method}: streamed and in-memory plans differ", file=sys.stderr)
    print(table(rows))


if __name__ == "__main__":
    main()
