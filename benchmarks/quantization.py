"""Depth compression composed with weight quantization (optimum-quanto): perplexity and size; prints a Markdown table.

For each model: float32, int8 and int4 weights (the LM head kept in float32, flatten-hf's default),
and int4 with the LM head quantized too (what quanto does when asked for every linear layer). Perplexity
on the evaluation part of the Wikipedia text (never used for calibration) and on LAMBADA passages (another
domain), 512-token windows; size is the safetensors weights `flatten-hf quantize` writes.

With `--sensitivity`, where a model's int4 loss comes from instead: int4 applied to one decoder layer at a
time, then to one kind of projection across all layers (everything else float32), each row's Wikipedia
perplexity as a multiple of the float32 model's. With `--weight-error`, each layer's relative int4 error
of the weights themselves.

    python benchmarks/quantization.py smollm2-135m --windows 8
    python benchmarks/quantization.py out/smollm2-shortgpt out/smollm2-flattengpt --windows 8 --variants float32 int8 int4
    python benchmarks/quantization.py smollm2-135m out/smollm2-shortgpt --windows 8 --sensitivity
    python benchmarks/quantization.py out/smollm2-shortgpt --windows 8 --sensitivity --float-layers 11,12,13
    python benchmarks/quantization.py smollm2-135m out/smollm2-flattengpt --weight-error
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

from flatten_hf.bench import folder_bytes
from flatten_hf.checkpoint import load_model
from flatten_hf.data import evaluation_ids
from flatten_hf.perplexity import perplexity
from flatten_hf.quantization import quantize_weights, save_quantized

from rows import emit_row  # benchmarks/rows.py: this script's folder is on sys.path

VARIANTS = (("float32", None, True), ("int8", "int8", True), ("int4", "int4", True),
            ("int4, LM head too", "int4", False))
SOURCES = ("wikipedia", "lambada")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def measure(name: str, windows: int, variants: list[str], json_path: str | None = None) -> list[dict]:
    rows = []
    for label, weights, keep_lm_head in VARIANTS:
        if label not in variants:
            continue
        model, tokenizer = load_model(name)
        with tempfile.TemporaryDirectory() as folder:
            if weights:
                save_quantized(model, folder, weights, keep_lm_head)  # quantizes `model` in place
            else:
                model.save_pretrained(folder)
            size = folder_bytes(folder)
        row = {"model": name, "weights": label, "layers": model.config.num_hidden_layers, "size_mib": size / 2**20}
        for source in SOURCES:
            with torch.no_grad():
                row[source] = perplexity(model, evaluation_ids(tokenizer, source), 512, batch_size=1,
                                         max_windows=windows)
        rows.append(row)
        emit_row(row, json_path)
    return rows


def table(rows: list[dict]) -> str:
    base = {r["model"]: r for r in rows if r["weights"] == "float32"}
    lines = ["| model | layers | weights | size (MiB) | Wikipedia ppl | LAMBADA ppl | x float32 (Wikipedia) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["wikipedia"] / base[r["model"]]["wikipedia"]
        lines.append(f"| {Path(r['model']).name} | {r['layers']} | {r['weights']} | {r['size_mib']:.0f} | "
                     f"{r['wikipedia']:.2f} | {r['lambada']:.2f} | {ratio:.3f} |")
    return "\n".join(lines)


def sensitivity(name: str, windows: int, weights: str = "int4", float_layers: tuple[int, ...] = ()) -> str:
    """Wikipedia perplexity with `weights` applied to one part of the model at a time, as a multiple of
    float32's: each decoder layer on its own, then each projection kind across every layer, then all, then
    (with `float_layers`) all but those decoder layers, which stay float32."""
    model, tokenizer = load_model(name)
    ids = evaluation_ids(tokenizer, "wikipedia")
    parts = [(f"layer {i}", [f"model.layers.{i}.*"]) for i in range(model.config.num_hidden_layers)]
    parts += [(f"every {p}", [f"*.{p}"]) for p in PROJECTIONS] + [("every linear layer", None)]
    if float_layers:
        kept = set(float_layers)
        parts.append((f"every linear layer but layers {', '.join(map(str, sorted(kept)))}",
                      [f"model.layers.{i}.*" for i in range(model.config.num_hidden_layers) if i not in kept]))

    def ppl(m) -> float:
        with torch.no_grad():
            return perplexity(m, ids, 512, batch_size=1, max_windows=windows)

    base = ppl(model)
    lines = [f"{Path(name).name}: float32 Wikipedia perplexity {base:.2f}; {weights} applied to one part at a time",
             "| part | ppl | x float32 |", "|---|---|---|"]
    for label, include in parts:
        value = ppl(quantize_weights(copy.deepcopy(model), weights, include=include))
        lines.append(f"| {label} | {value:.2f} | {value / base:.3f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def weight_error(name: str, weights: str = "int4") -> str:
    """Each decoder layer's relative weight error ||Q(W) - W|| / ||W|| under `weights`, by projection: whether
    a method's refitted weights are harder to quantize than the ones it kept (no data, no forward pass)."""
    model, _ = load_model(name)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}
    quantize_weights(model, weights)
    lines = [f"{Path(name).name}: relative {weights} weight error (%)",
             "| layer | " + " | ".join(PROJECTIONS) + " |", "|---" * (len(PROJECTIONS) + 1) + "|"]
    for i in range(model.config.num_hidden_layers):
        cells = []
        for projection in PROJECTIONS:
            key = next(n for n in original if n.startswith(f"model.layers.{i}.") and n.endswith(f".{projection}"))
            w = original[key]
            q = model.get_submodule(key).qweight.dequantize().to(w.dtype)
            cells.append(f"{100 * ((q - w).norm() / w.norm()).item():.2f}")
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="checkpoints or asset names")
    p.add_argument("--windows", type=int, default=32, help="512-token windows per text (default 32)")
    p.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS], choices=[v[0] for v in VARIANTS],
                   help="which weight variants to measure (default all)")
    p.add_argument("--json", default=None, help="also append the rows to this JSON-lines file")
    p.add_argument("--sensitivity", action="store_true",
                   help="instead: int4 on one decoder layer, then one projection kind, at a time (Wikipedia only)")
    p.add_argument("--float-layers", default="", metavar="I,J,...",
                   help="with --sensitivity: a last row with int4 everywhere but these decoder layers (e.g. the "
                        "layers at a pruned model's cut, which the per-layer rows show most sensitive)")
    p.add_argument("--weight-error", action="store_true",
                   help="instead: each layer's relative int4 weight error by projection (no data needed)")
    args = p.parse_args()
    if args.float_layers and not args.sensitivity:
        p.error("--float-layers is a row of --sensitivity; add --sensitivity.")
    if args.weight_error:
        print("\n\n".join(weight_error(name) for name in args.models))
        return
    if args.sensitivity:
        float_layers = tuple(int(i) for i in args.float_layers.split(",") if i)
        print("\n\n".join(sensitivity(name, args.windows, float_layers=float_layers) for name in args.models))
        return
    rows = [row for name in args.models for row in measure(name, args.windows, args.variants, args.json)]
    print(table(rows))


if __name__ == "__main__":
    main()
