"""ONNX / OpenVINO exports of (compressed) checkpoints, run by their runtimes: perplexity and agreement; prints a
Markdown table.

For each checkpoint: `flatten_hf.export.export_optimum` (optimum-onnx or optimum-intel in its own environment,
`--python`; per-layer checkpoints with flatten-hf's export config), then, in that environment, transformers and
the runtime (ONNX Runtime, OpenVINO) on the same windows of flatten-hf's evaluation text: perplexity on the
Wikipedia evaluation part and on LAMBADA (512-token windows), the largest logit difference on 24 random ids,
and whether 12 greedy tokens (with the KV cache) are identical.

    python benchmarks/optimum_export.py --format onnx runs/q/smollm2-shortgpt-0.2 runs/q/smollm2-flattengpt-global-0.2 --python .venv-onnx/bin/python
    python benchmarks/optimum_export.py --format openvino runs/q/smollm2-shortgpt-0.2 runs/q/smollm2-flattengpt-global-0.2 --python .venv-openvino/bin/python
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from flatten_hf.checkpoint import load_model, resolve_model_path
from flatten_hf.data import evaluation_ids
from flatten_hf.export import OPTIMUM_TOOLS, check_export, export_bytes, export_optimum, export_perplexity
from flatten_hf.perplexity import windows

from rows import emit_row  # benchmarks/rows.py: this script's folder is on sys.path

SOURCES = ("wikipedia", "lambada")


def measure(name: str, format: str, n_windows: int, python: str | None, json_path: str | None) -> dict:
    folder = resolve_model_path(name)
    _, tokenizer = load_model(folder)
    config = json.loads((Path(folder) / "config.json").read_text())
    row = {"model": name, "format": format, "layers": config["num_hidden_layers"], "per_layer": "intermediate_size_per_layer" in config}
    with tempfile.TemporaryDirectory() as scratch:
        out = export_optimum(folder, Path(scratch) / format, format, python=python)
        row["size_mib"] = export_bytes(out) / 2**20
        for source in SOURCES:
            ppl = export_perplexity(folder, out, windows(evaluation_ids(tokenizer, source), 512, n_windows), format,
                                    python)
            row[source], row[f"{source}_transformers"] = ppl["export"], ppl["transformers"]
        check = check_export(folder, out, format, python)
    row["max_abs_diff"], row["logit_scale"] = check["max_abs_diff"], check["logit_scale"]
    row["greedy_identical"] = check["greedy_export"] == check["greedy_transformers"]
    emit_row(row, json_path)
    return row


def table(rows: list[dict], format: str) -> str:
    tool = OPTIMUM_TOOLS[format]
    lines = [f"| model | layers | widths | {tool.title} size (MiB) | Wikipedia ppl {tool.runtime} (transformers) | "
             f"LAMBADA ppl {tool.runtime} (transformers) | max logit diff | greedy identical |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['model']).name} | {r['layers']} | {'per-layer' if r['per_layer'] else 'stock'} | "
                     f"{r['size_mib']:.0f} | {r['wikipedia']:.2f} ({r['wikipedia_transformers']:.2f}) | "
                     f"{r['lambada']:.2f} ({r['lambada_transformers']:.2f}) | {r['max_abs_diff']:.1e} | "
                     f"{'yes' if r['greedy_identical'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="checkpoint folders or asset names")
    p.add_argument("--format", choices=tuple(OPTIMUM_TOOLS), default="onnx", help="export format (default onnx)")
    p.add_argument("--windows", type=int, default=8, help="512-token windows per text (default 8)")
    p.add_argument("--python", default=None, help="the Python of the format's optimum environment (default "
                                                  "$FLATTEN_HF_ONNX_PYTHON or $FLATTEN_HF_OPENVINO_PYTHON)")
    p.add_argument("--json", default=None, help="also append the rows to this JSON-lines file")
    args = p.parse_args()
    print(table([measure(name, args.format, args.windows, args.python, args.json) for name in args.models],
                args.format))


if __name__ == "__main__":
    main()
