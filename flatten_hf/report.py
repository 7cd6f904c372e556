"""One Markdown report from saved evaluation and benchmark JSON: tables and matplotlib plots.

`flatten-hf report --eval eval.json [--bench bench.json] --out DIR` writes `DIR/report.md` and PNGs:
perplexity and zero-shot average against the compression ratio (one line per method), the layer
similarity heatmap behind FlattenGPT's grouping, and every compressed model's merge plan drawn as
which original layers feed which new layer. Everything is read from the JSON files (the merge plans
travel inside the evaluation results), so a report can be rebuilt without any model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .bench import SpeedResult, speed_table
from .evaluation import EvalResult
from .methods import METHODS
from .zeroshot import paired_difference, unpack_scores

logger = logging.getLogger(__name__)

TASK_LABELS = {"piqa": "PIQA", "hellaswag": "HellaSwag", "winogrande": "WinoGrande", "arc_easy": "ARC-e",
               "arc_challenge": "ARC-c"}


@dataclass
class Row:
    """An evaluated model placed on the method x ratio grid."""

    result: EvalResult
    method: str
    ratio: float


def label_of(result: EvalResult) -> tuple[str, float]:
    """(method label, compression ratio) from a result's merge plan; the dense model is ('dense', 0)."""
    plan = result.plan
    if not plan:
        return "dense", 0.0
    params = plan.get("method_params", {})
    # a plan composed over several `compress` runs is named by all of them, e.g. "flattengpt then shortgpt":
    # under its last method alone it would share that method's row
    steps = [*params.get("history", []), {"method": plan["method"], "method_params": params}]
    label = " then ".join(METHODS[s["method"]].label_of(s["method_params"]) if s["method"] in METHODS
                          else s["method"] for s in steps)
    if "recovery" in params:  # `recover` keeps the architecture: without this it would share the method's point
        label += " + recover"
    return label, 1 - len(plan["layers"]) / plan["source_num_hidden_layers"]


def display_name(name: str) -> str:
    """A checkpoint folder is shown by its last path component."""
    return Path(name).name or name


def load_results(path: str | Path) -> tuple[dict, list]:
    """The settings and models of one `flatten-hf eval --json` (or `bench --json`) file."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError(f"{path} has no 'models' list: it is not a file written by `flatten-hf eval --json`.")
    return data.get("settings", {}), data["models"]


# Settings of a measurement that a file may lack without changing the others: results from before
# `eval --other-source` existed have no second-domain perplexity (the table shows "-"), and the rest is comparable.
OPTIONAL_SETTINGS = ("other_perplexity",)


def differing_settings(a: dict, b: dict) -> list[str]:
    """The settings two result files disagree on (an `OPTIONAL_SETTINGS` entry missing from one does not count)."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)
                  and not (k in OPTIONAL_SETTINGS and None in (a.get(k), b.get(k))))


def merge_results(paths: Sequence[str | Path]) -> tuple[dict, list]:
    """The models of several `--json` files as one list, so each model can be evaluated in its own run.

    Numbers measured under different settings (a `--limit`, another dtype) must not share a table, so
    the files' settings have to agree (an `OPTIONAL_SETTINGS` entry may be missing from some of them).
    """
    settings, models = load_results(paths[0])
    for path in paths[1:]:
        other, more = load_results(path)
        differing = differing_settings(settings, other)
        if differing:
            raise ValueError(f"{path} was measured with other settings than {paths[0]} ({', '.join(differing)}: "
                             f"{[other.get(k) for k in differing]} vs {[settings.get(k) for k in differing]}); "
                             "re-run `flatten-hf eval` with the same options or report the files separately")
        settings = {**other, **settings}  # an optional setting that only some files have is named once
        models = models + more
    return settings, models


def quality_table(rows: list[Row]) -> str:
    dense = next((r.result for r in rows if r.method == "dense"), None)
    tasks = [t.task for t in rows[0].result.tasks] if rows[0].result.tasks else []
    other = next((r.result.other_perplexity_source for r in rows if r.result.other_perplexity is not None), None)
    head = ["model", "method", "ratio", "layers", "params (M)", "perplexity"] + ([f"ppl ({other})"] if other else [])
    head += [TASK_LABELS.get(t, t) for t in tasks]
    if tasks:
        head += ["avg (± se)", "avg retained"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        r = row.result
        cells = [display_name(r.name), row.method, f"{row.ratio:.2f}", str(r.layers), f"{r.parameters / 1e6:.1f}",
                 f"{r.perplexity:.2f}" if r.perplexity is not None else "-"]
        if other:
            cells.append(f"{r.other_perplexity:.2f}" if r.other_perplexity is not None else "-")
        cells += [f"{100 * t.headline:.1f} (± {100 * t.headline_stderr:.1f})" for t in r.tasks]
        if tasks:
            retained = (f"{100 * r.zero_shot_average / dense.zero_shot_average:.1f}%"
                        if dense and dense.zero_shot_average else "-")
            cells += [f"{100 * r.zero_shot_average:.1f} (± {100 * r.zero_shot_average_stderr:.1f})", retained]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(rows: list[Row], reference: str) -> str | None:
    """Each model's zero-shot average minus the `reference` method's at the same ratio, on the same documents,
    with the paired standard error; None when no two such models kept their per-document scores.

    At full size the averages' own error bars (about 0.5 points) are wider than most differences between
    methods compressed from one model, yet those methods get most documents right or wrong together: the
    standard error of the per-document difference is what says whether one of them is ahead.
    """
    references = {}
    for row in rows:
        if row.method == reference and row.result.documents:
            references.setdefault(row.ratio, row)
    lines = []
    for row in rows:
        ref = references.get(row.ratio)
        if ref is None or row is ref or row.method == "dense" or not row.result.documents:
            continue
        d = paired_difference(unpack_scores(row.result.documents), unpack_scores(ref.result.documents))
        cells = [f"{100 * d.per_task[t]:+.1f}" if t in d.per_task else "-" for t in TASK_LABELS]
        lines.append(f"| {display_name(row.result.name)} | {row.method} | {row.ratio:.2f} | " + " | ".join(cells)
                     + f" | {100 * d.difference:+.2f} (± {100 * d.stderr:.2f}) | {d.z:+.1f} | {d.documents} |")
    if not lines:
        return None
    head = ["model", "method", "ratio", *TASK_LABELS.values(), f"avg - {reference} (± paired se)", "z", "documents"]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *lines])


def _plt():
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("Plots need matplotlib: pip install 'flatten-hf[eval]'.") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality(rows: list[Row], path: Path) -> None:
    """Perplexity and zero-shot average against the compression ratio, one line per method."""
    plt = _plt()
    from matplotlib.ticker import LogFormatter

    dense = next((r for r in rows if r.method == "dense"), None)
    methods = sorted({r.method for r in rows if r.method != "dense"})
    has_tasks = any(r.result.zero_shot_average is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if has_tasks else 1, figsize=(11 if has_tasks else 5.5, 4), squeeze=False)
    for method in methods:
        points = sorted(([dense] if dense else []) + [r for r in rows if r.method == method], key=lambda r: r.ratio)
        ratios = [r.ratio for r in points]
        axes[0][0].plot(ratios, [r.result.perplexity for r in points], marker="o", label=method)
        if has_tasks:  # with +-1 stderr bars: small models sit close to chance on some tasks
            axes[0][1].errorbar(ratios, [100 * r.result.zero_shot_average for r in points],
                                yerr=[100 * r.result.zero_shot_average_stderr for r in points], marker="o", capsize=3,
                                label=method)
    axes[0][0].set(xlabel="compression ratio (fraction of layers removed)", ylabel="perplexity (log scale)",
                   yscale="log", title="Perplexity (lower is better)")
    # Plain numbers (20, 30, 60) rather than 2x10^1, minor ticks labelled while the range is narrow (one or two
    # decades, where compressed models' perplexities usually lie).
    axes[0][0].yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axes[0][0].yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    if has_tasks:
        axes[0][1].set(xlabel="compression ratio (fraction of layers removed)", ylabel="accuracy (%)",
                       title="Zero-shot average, 5 tasks (higher is better)")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if methods:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_similarity(matrix: list[list[float]], path: Path, title: str) -> None:
    """Heatmap of the similarity (the plan's metric) between the hidden states entering every pair of layers;
    plans since `group_score` add the final hidden state as the last row and column."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(matrix, cmap="viridis", vmin=min(min(row) for row in matrix), vmax=1.0)
    ax.set(xlabel="layer j", ylabel="layer i", title=title)
    fig.colorbar(image, ax=ax, label="similarity of layer inputs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_merge_plans(rows: list[Row], path: Path) -> None:
    """Each compressed model's plan: original layers (top row) joined to the new layer they feed (bottom row)."""
    plt = _plt()
    plans = [r for r in rows if r.result.plan]
    fig, axes = plt.subplots(len(plans), 1, figsize=(12, 1.6 * len(plans)), squeeze=False)
    for ax, row in zip(axes[:, 0], plans):
        plan = row.result.plan
        n_src, groups = plan["source_num_hidden_layers"], plan["merge_plan"]
        scale = (n_src - 1) / max(1, len(groups) - 1)
        for new, group in enumerate(groups):
            merged = len(group) > 1
            for src in group:
                ax.plot([src, new * scale], [1, 0], color="tab:red" if merged else "tab:gray",
                        lw=1.6 if merged else 0.8)
        kept = {src for group in groups for src in group}
        ax.scatter(range(n_src), [1] * n_src, c=["tab:blue" if i in kept else "lightgray" for i in range(n_src)], s=18,
                   zorder=3)
        ax.scatter([i * scale for i in range(len(groups))], [0] * len(groups), c="black", s=18, zorder=3)
        ax.set_yticks([0, 1], ["new", "original"])
        ax.set_xticks(range(n_src))
        ax.tick_params(labelsize=7)
        ax.set_title(f"{display_name(row.result.name)}: {row.method}, {n_src} -> {len(groups)} layers "
                     "(red: layers flattened or merged into one; grey dots: removed layers)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_report(eval_json: str | Path | Sequence[str | Path], out_dir: str | Path,
                 bench_json: str | Path | None = None, title: str = "flatten-hf report",
                 reference: str | None = None) -> Path:
    """Write `out_dir/report.md` and its plots from saved `flatten-hf eval` (one or several files) and
    `bench` JSON.

    Args:
        reference: the method label (as the quality table names it, e.g. `flattengpt`, `replaceme (lstsq)`)
            every other model at the same ratio is compared with, document by document; default `flattengpt`
            where the table has it. An explicit label that no model carries is an error, raised before any
            file is written.
    """
    paths = [eval_json] if isinstance(eval_json, (str, Path)) else list(eval_json)
    settings, models = merge_results(paths)
    results = [EvalResult.from_dict(m) for m in models]
    rows = sorted((Row(r, *label_of(r)) for r in results), key=lambda r: (r.method != "dense", r.method, r.ratio))
    labels = sorted({r.method for r in rows})
    if reference is not None and reference not in labels:
        raise ValueError(f"--reference {reference!r} names no model in the table; its methods are {', '.join(labels)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", "## Quality", "", _settings_line(settings), "", quality_table(rows), ""]
    plot_quality(rows, out / "quality_vs_ratio.png")
    parts += ["![perplexity and zero-shot average against the compression ratio](quality_vs_ratio.png)", ""]
    reference = reference or "flattengpt"
    paired = paired_table(rows, reference)
    if paired:
        parts += ["### Paired differences", "", f"Each model's zero-shot average (and each task's score) minus "
                  f"`{reference}`'s at the same ratio, in points, on the same documents, with the paired standard "
                  "error: models compressed from one base model get most documents right or wrong together, so "
                  "their difference is resolved far more finely than the averages' own error bars suggest. z is "
                  "the difference over its standard error.", "", paired, ""]
    if bench_json:
        bench_settings, bench_models = load_results(bench_json)
        parts += ["## Speed and size", "", _settings_line(bench_settings), "",
                  speed_table([SpeedResult.from_dict(m) for m in bench_models]), ""]
    similarity = next((r for r in rows if r.result.plan and "similarity_matrix" in r.result.plan["method_params"]), None)
    if similarity:
        plot_similarity(similarity.result.plan["method_params"]["similarity_matrix"], out / "layer_similarity.png",
                        f"Layer input similarity ({similarity.result.plan['base_model']})")
        parts += ["## Layer similarity", "", "Similarity of the hidden states entering each pair of layers on the "
                  "calibration text (the plan's `similarity_metric`; a last row and column, where present, is the "
                  "final hidden state). FlattenGPT flattens runs of adjacent layers whose input is like their "
                  "output (`group_score`).", "",
                  "![layer similarity heatmap](layer_similarity.png)", ""]
    if any(r.result.plan for r in rows):
        plot_merge_plans(rows, out / "merge_plans.png")
        parts += ["## Merge plans", "", "![merge plans](merge_plans.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    logger.info("Wrote %s", path)
    return path


def _settings_line(settings: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in settings.items()) if settings else ""
