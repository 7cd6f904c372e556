"""GGUF exports of (compressed) checkpoints run by llama.cpp: size, perplexity, speed; prints a Markdown table.

For each checkpoint and GGUF type: `flatten_hf.gguf_export.export_gguf` (llama.cpp's converter; per-layer
checkpoints as its `deci` architecture), then llama-cpp-python on the same token ids as transformers:
perplexity on the evaluation part of the Wikipedia text (never used for calibration) and on LAMBADA
passages (another domain), 512-token windows, next to the float32 transformers model's; the tensors the
type cannot hold (rows not divisible by its block, stored in a fallback type); prefill speed (512 tokens)
and decode speed (64 greedy tokens) on the CPU threads given.

    python benchmarks/gguf_export.py smollm2-135m runs/q/smollm2-shortgpt-0.2 --types f16 q8_0 q4_0 --windows 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from flatten_hf.checkpoint import load_model, resolve_model_path
from flatten_hf.data import evaluation_ids
from flatten_hf.gguf_export import export_gguf, misaligned_tensors
from flatten_hf.gguf_runtime import gguf_perplexity, load_gguf
from flatten_hf.perplexity import perplexity

from rows import emit_row  # benchmarks/rows.py: this script's folder is on sys.path

SOURCES = ("wikipedia", "lambada")


def speed(path: Path, prompt: list[int], new_tokens: int, threads: int) -> tuple[float, float]:
    """(prefill, decode) tokens per second, best of two runs."""
    llm = load_gguf(path, n_ctx=len(prompt) + new_tokens, n_threads=threads, all_logits=False)
    best = [0.0, 0.0]
    for _ in range(2):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
        t2 = time.perf_counter()
        best = [max(best[0], len(prompt) / (t1 - t0)), max(best[1], new_tokens / (t2 - t1))]
    return best[0], best[1]


def measure(name: str, types: list[str], windows: int, threads: int, llama_cpp: str | None,
            json_path: str | None) -> list[dict]:
    folder = resolve_model_path(name)
    model, tokenizer = load_model(folder)
    ids = {source: evaluation_ids(tokenizer, source) for source in SOURCES}
    with torch.no_grad():
        reference = {s: perplexity(model, ids[s], 512, batch_size=1, max_windows=windows) for s in SOURCES}
    config = json.loads((Path(folder) / "config.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for gguf_type in types:
            out = export_gguf(folder, Path(scratch) / f"{gguf_type}.gguf", gguf_type, llama_cpp=llama_cpp)
            llm = load_gguf(out, n_ctx=512, n_threads=threads)
            row = {"model": name, "type": gguf_type, "layers": config["num_hidden_layers"],
                   "architecture": "deci" if "intermediate_size_per_layer" in config else config["model_type"],
                   "size_mib": out.stat().st_size / 2**20, "fallback_tensors": len(misaligned_tensors(config, gguf_type))}
            for source in SOURCES:
                row[source] = gguf_perplexity(llm, ids[source], 512, windows)
                row[f"{source}_transformers_f32"] = reference[source]
            del llm
            row["prefill_tok_s"], row["decode_tok_s"] = speed(out, ids["wikipedia"][:512].tolist(), 64, threads)
            rows.append(row)
            emit_row(row, json_path)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | layers | llama.cpp arch | type | size (MiB) | fallback tensors | Wikipedia ppl (transformers f32) "
             "| LAMBADA ppl (transformers f32) | prefill tok/s | decode tok/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['model']).name} | {r['layers']} | {r['architecture']} | {r['type']} | "
                     f"{r['size_mib']:.0f} | {r['fallback_tensors']} | {r['wikipedia']:.2f} "
                     f"({r['wikipedia_transformers_f32']:.2f}) | {r['lambada']:.2f} ({r['lambada_transformers_f32']:.2f}) "
                     f"| {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="checkpoint folders or asset names")
    p.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_0"], help="GGUF types (default f16 q8_0 q4_0)")
    p.add_argument("--windows", type=int, default=8, help="512-token windows per text (default 8)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp CPU threads (default: all cores)")
    p.add_argument("--llama-cpp", default=None, help="llama.cpp source tree (default $LLAMA_CPP_DIR)")
    p.add_argument("--json", default=None, help="also append the rows to this JSON-lines file")
    args = p.parse_args()
    rows = [r for name in args.models for r in measure(name, args.types, args.windows, args.threads, args.llama_cpp,
                                                        args.json)]
    print(table(rows))


if __name__ == "__main__":
    main()
