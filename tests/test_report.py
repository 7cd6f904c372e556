"""The evaluation suite's pieces that need no model: offline task data, FLOPs, tables and the report."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import LlamaConfig

import flatten_hf
from flatten_hf.bench import SpeedResult, Timing, benchmark, merge_rounds, prefill_flops, speed_table
from flatten_hf.cli import main
from flatten_hf.evaluation import EvalResult
from flatten_hf.report import Row, label_of, quality_table
from flatten_hf.zeroshot import TASKS, TaskScore, average, offline_task_dir

from .tiny import tiny_model

PNG = b"\x89PNG\r\n\x1a\n"
DEFAULT_GROUPING = {"similarity_metric": "l2", "group_score": "output"}  # what FlattenGPT's plans record today


def test_offline_task_configs_include_the_stock_lm_eval_tasks():
    folder = offline_task_dir()
    for task in TASKS:
        config = yaml.safe_load((folder / f"{task}.yaml").read_text())
        assert config["task"] == task and config["include"].endswith(".yaml")
        assert "lm_eval/tasks/" in config["include"]  # lm-eval's own definition, only the data replaced
    arc = [json.loads(line) for line in (folder / "arc_easy_test.jsonl").read_text().splitlines()]
    challenge = (folder / "arc_challenge_test.jsonl").read_text().splitlines()
    assert len(arc) == 2376 and len(challenge) == 1172  # the full ARC test sets lm-eval scores
    assert all(row["answerKey"] in row["choices"]["label"] for row in arc)
    assert arc[0]["question"].startswith("Which statement best explains") and "Answer:" not in arc[0]["question"]


def test_average_uses_acc_norm_where_a_task_has_it():
    scores = [TaskScore("piqa", 0.70, 0.01, 0.72, 0.01, 100), TaskScore("winogrande", 0.55, 0.02, None, None, 100)]
    mean, stderr = average(scores)
    assert mean == pytest.approx((0.72 + 0.55) / 2)
    assert stderr == pytest.approx((0.01**2 + 0.02**2) ** 0.5 / 2)


def test_prefill_flops_follow_depth_and_sequence_length():
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=10,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    shallow = LlamaConfig(**{**config.to_dict(), "num_hidden_layers": 8})
    lm_head = 2 * 64 * 1000 * 512
    per_layer = (prefill_flops(config, 512) - lm_head) / 10
    assert prefill_flops(shallow, 512) == pytest.approx(lm_head + 8 * per_layer)
    # linear FLOPs grow linearly with the sequence, attention scores quadratically
    linear = 2 * 512 * (64 * 16 * (2 * 4 + 2 * 2) + 3 * 64 * 128)
    assert per_layer == pytest.approx(linear + 2 * 4 * 16 * 512 * 512)


def test_rounds_merge_to_the_median_over_processes():
    def run(prefill, decode, memory):
        return SpeedResult("m", 4, 10, 20, "cpu", 2, {"512": Timing(prefill, prefill - 1, prefill + 1, 3)},
                           {"1": Timing(decode, decode - 2, decode + 2, 1)}, memory, {"512": 6.0})

    merged = merge_rounds([run(100.0, 50.0, 300.0), run(130.0, 40.0, 310.0), run(104.0, 52.0, 305.0)])
    # one slow process (130 ms) moves neither the median nor the speed-up computed from it
    assert merged.prefill_ms["512"] == Timing(104.0, 99.0, 131.0, 9)
    assert merged.decode_tokens_per_s["1"] == Timing(50.0, 38.0, 54.0, 3)
    assert merged.peak_memory_mb == 310.0 and merged.prefill_gflops == {"512": 6.0}


def test_benchmark_refuses_zero_rounds():
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        benchmark(["smollm2-135m"], rounds=0)


def eval_json(tmp_path):
    def result(name, layers, ppl, avg, plan):
        tasks = [TaskScore(t, avg - 0.01, 0.01, avg if t != "winogrande" else None, 0.01 if t != "winogrande" else None, 50)
                 for t in TASKS]
        return EvalResult(name, layers, 1000 * layers, ppl, 2048, "wikipedia", None, tasks, avg, 0.005, 50, 1.0,
                          plan).to_dict()

    def plan(method, groups, n=6):
        return {"method": method, "source_num_hidden_layers": n, "merge_plan": groups,
                "layers": [{"sources": []} for _ in groups], "base_model": "base",
                "method_params": {"similarity_matrix": [[1 - abs(i - j) / 10 for j in range(n)] for i in range(n)],
                                  **DEFAULT_GROUPING} if method == "flattengpt" else {}}

    models = [result("dense", 6, 20.0, 0.50, None),
              result("short", 5, 30.0, 0.45, plan("shortgpt", [[0], [1], [2], [4], [5]])),
              result("flat", 5, 25.0, 0.48, plan("flattengpt", [[0], [1], [2, 3], [4], [5]]))]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"settings": {"limit": 50}, "models": models}))
    return path


def bench_json(tmp_path):
    def result(name, layers, ms, gflops):
        t = Timing(ms, ms * 0.9, ms * 1.1, 3)
        return SpeedResult(name, layers, 1000 * layers, 4000 * layers, "cpu", 2, {"512": t}, {"1": Timing(50, 45, 55, 2)},
                           300.0, {"512": gflops}).to_dict()

    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"settings": {"device": "cpu"}, "models": [result("dense", 6, 60.0, 6.0),
                                                                         result("flat", 5, 50.0, 5.0)]}))
    return path


def test_speed_table_reports_speed_up_against_the_ideal(tmp_path):
    results = [SpeedResult.from_dict(m) for m in json.loads(bench_json(tmp_path).read_text())["models"]]
    table = speed_table(results)
    assert "| flat | 5 | 0.0 | 0 | 300 | 50.0 (45.0-55.0) | 1.200x | 1.200x | 100.0% | 50.0 |" in table


def test_report_builds_from_saved_json(tmp_path):
    out = tmp_path / "report"
    assert main(["report", "--eval", str(eval_json(tmp_path)), "--bench", str(bench_json(tmp_path)),
                 "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert text.index("| dense | dense |") < text.index("| flat | flattengpt |")  # dense on top
    assert "| short | shortgpt | 0.17 | 5 | 0.0 | 30.00 |" in text and "90.0%" in text  # retained zero-shot
    assert "| flat | 5 |" in text and "1.200x" in text
    for png in ("quality_vs_ratio.png", "layer_similarity.png", "merge_plans.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, png
        assert f"]({png})" in text


def test_report_joins_per_model_json_files_with_equal_settings(tmp_path):
    data = json.loads(eval_json(tmp_path).read_text())
    files = []
    for i, model in enumerate(data["models"]):
        files.append(tmp_path / f"model{i}.json")
        files[-1].write_text(json.dumps({"settings": data["settings"], "models": [model]}))
    out = tmp_path / "report"
    assert main(["report", "--eval", *map(str, files), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert text.index("| dense | dense |") < text.index("| flat | flattengpt |") and "| short | shortgpt |" in text


def test_report_refuses_to_join_results_measured_with_other_settings(tmp_path, capsys):
    data = json.loads(eval_json(tmp_path).read_text())
    full = tmp_path / "full.json"
    full.write_text(json.dumps({"settings": {"limit": "none (full tasks)"}, "models": data["models"][:1]}))
    assert main(["report", "--eval", str(eval_json(tmp_path)), str(full), "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err
    assert "other settings" in err and "(limit:" in err
    assert not (tmp_path / "r").exists()  # nothing written
    # scored by the shared-prefix scorer (`eval --shared-prefix`): not joined with lm-eval's own answers
    shared = tmp_path / "shared.json"
    shared.write_text(json.dumps({"settings": {**data["settings"], "scorer": "shared prefix"}, "models": data["models"][:1]}))
    assert main(["report", "--eval", str(eval_json(tmp_path)), str(shared), "--out", str(tmp_path / "r")]) != 0
    assert "(scorer:" in capsys.readouterr().err


def paired_eval_json(tmp_path):
    """Three models at one ratio that kept their per-document scores (four documents per task)."""
    def result(name, documents, params):
        tasks = [TaskScore(t, 0.5, 0.25, None, None, 4) for t in TASKS]
        plan = {"method": params.pop("method"), "source_num_hidden_layers": 6, "merge_plan": [[0], [1], [2], [4], [5]],
                "layers": [{"sources": []}] * 5, "base_model": "base", "method_params": params}
        return EvalResult(name, 5, 5000, 25.0, 2048, "wikipedia", None, tasks, 0.5, 0.1, None, 1.0, plan,
                          documents=dict.fromkeys(TASKS, documents)).to_dict()

    models = [result("flat", "1100", {"method": "flattengpt", **DEFAULT_GROUPING}),
              result("short", "1000", {"method": "shortgpt"}),
              result("flat-recovered", "1110", {"method": "flattengpt", **DEFAULT_GROUPING, "recovery": {"steps": 200}})]
    path = tmp_path / "paired.json"
    path.write_text(json.dumps({"settings": {"limit": "none (full tasks)"}, "models": models}))
    return path


def test_report_compares_methods_document_by_document(tmp_path):
    out = tmp_path / "report"
    assert main(["report", "--eval", str(paired_eval_json(tmp_path)), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    # short misses one of flat's right answers per task: -25 points, d = (0, -1, 0, 0) in each task,
    # se = sqrt(5 * var(d) / 4) / 5 = sqrt(5 * 0.25 / 4) / 5 = 11.18 points
    assert "| short | shortgpt | 0.17 | -25.0 | -25.0 | -25.0 | -25.0 | -25.0 | -25.00 (± 11.18) | -2.2 | 20 |" in text
    # a recovered checkpoint is its own method in every table, compared with the training-free one
    assert "| flat-recovered | flattengpt + recover | 0.17 | +25.0 |" in text
    assert "avg - flattengpt (± paired se)" in text


def test_report_labels_flattengpt_plans_by_the_grouping_they_used():
    """Checkpoints compressed under earlier defaults stay apart from today's in tables and plots: a plan
    from before the grouping options existed records no metric (cosine, rated by the group's inputs)."""
    def label(params):
        plan = {"method": "flattengpt", "layers": [{}] * 5, "source_num_hidden_layers": 6, "method_params": params}
        return label_of(EvalResult("m", 5, 1, plan=plan))

    assert label(DEFAULT_GROUPING) == ("flattengpt", pytest.approx(1 / 6))
    assert label({"similarity_metric": "l2", "group_score": "input"})[0] == "flattengpt (input grouping)"
    assert label({"similarity_metric": "l2"})[0] == "flattengpt (input grouping)"
    assert label({})[0] == "flattengpt (cosine grouping)"
    assert label({**DEFAULT_GROUPING, "fixed_groups": "3-4,12-18"})[0] == "flattengpt (fixed groups)"
    assert label({**DEFAULT_GROUPING, "recovery": {"steps": 200}})[0] == "flattengpt + recover"
    assert label({**DEFAULT_GROUPING, "removed_blocks": [[3]], "remove_fraction": 0.33})[0] == "flattengpt (+ removal)"


def test_report_names_a_plan_composed_over_several_runs_by_every_method(arch):
    """`compress` on a compressed checkpoint keeps the earlier runs in the plan's history: the row says so, and
    does not share the last method's label."""
    ids = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    first = flatten_hf.compress(tiny_model(arch, num_hidden_layers=6), "flattengpt", calibration_ids=ids, num_layers=2)
    again = flatten_hf.compress(first, "shortgpt", calibration_ids=ids, num_layers=1)
    label, ratio = label_of(EvalResult("m", 3, 1, plan=again.config.flatten))
    assert label == "flattengpt then shortgpt" and ratio == pytest.approx(0.5)


def test_report_reference_must_name_a_method_of_the_table(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--eval", str(paired_eval_json(tmp_path)), "--out", str(out), "--reference", "shortgpt"]) == 0
    assert "| flat | flattengpt | 0.17 | +25.0 |" in (out / "report.md").read_text()
    assert main(["report", "--eval", str(paired_eval_json(tmp_path)), "--out", str(tmp_path / "r"),
                 "--reference", "sliceGPT"]) != 0
    err = capsys.readouterr().err
    assert "--reference 'sliceGPT' names no model" in err and "flattengpt + recover" in err
    assert not (tmp_path / "r").exists()  # nothing written


def test_report_joins_results_from_before_the_second_domain_perplexity(tmp_path):
    """Older files lack the fiction perplexity; that measurement is optional, the rest must still agree."""
    data = json.loads(eval_json(tmp_path).read_text())
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"settings": data["settings"], "models": data["models"][:2]}))
    newer = {**data["models"][2], "other_perplexity": 61.5, "other_perplexity_source": "lambada"}
    new.write_text(json.dumps({"settings": {**data["settings"], "other_perplexity": "lambada evaluation part"},
                               "models": [newer]}))
    out = tmp_path / "report"
    assert main(["report", "--eval", str(old), str(new), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "ppl (lambada)" in text and "| 61.50 |" in text and "| short | shortgpt | 0.17 | 5 | 0.0 | 30.00 | - |" in text
    assert "other_perplexity: lambada evaluation part" in text


def test_request_cache_prefix_changes_with_weights_dtype_and_scorer(tmp_path):
    from flatten_hf.evaluation import request_cache_prefix

    ckpt = tmp_path / "smollm2-shortgpt-0.2"
    ckpt.mkdir()
    weights = ckpt / "model.safetensors"
    weights.write_bytes(b"a" * 10)
    first = request_cache_prefix(tmp_path / "cache", ckpt, "bfloat16")
    assert first.startswith(str(tmp_path / "cache" / "smollm2-shortgpt-0.2-bfloat16-"))
    assert request_cache_prefix(tmp_path / "cache", ckpt, "bfloat16") == first
    assert request_cache_prefix(tmp_path / "cache", ckpt, "float32") != first
    shared = request_cache_prefix(tmp_path / "cache", ckpt, "bfloat16", shared_prefix=True)
    assert shared != first and "-bfloat16-shared-prefix-" in shared  # the two scorers' answers are cached apart
    weights.write_bytes(b"b" * 11)  # compressed again into the same folder: a fresh cache
    assert request_cache_prefix(tmp_path / "cache", ckpt, "bfloat16") != first
    with pytest.raises(ValueError, match="safetensors"):
        request_cache_prefix(tmp_path / "cache", tmp_path / "missing", "bfloat16")


def test_quality_table_shows_the_second_domain_when_measured():
    dense = EvalResult("dense", 6, 6000, perplexity=20.0, other_perplexity=40.5, other_perplexity_source="lambada")
    short = EvalResult("short", 5, 5000, perplexity=30.0)
    table = quality_table([Row(dense, "dense", 0.0), Row(short, "shortgpt", 0.2)])
    assert "| perplexity | ppl (lambada) |" in table
    assert "| 20.00 | 40.50 |" in table and "| 30.00 | - |" in table
    assert "ppl (" not in quality_table([Row(short, "shortgpt", 0.2)])


def test_quality_table_gives_each_task_its_stderr():
    """Per task, the headline metric (acc_norm where the task has it) with its own standard error."""
    from flatten_hf.zeroshot import TaskScore

    tasks = [TaskScore("piqa", 0.6, 0.011, 0.612, 0.0114, 1838), TaskScore("winogrande", 0.5, 0.014, None, None, 1267)]
    result = EvalResult("dense", 6, 6000, perplexity=20.0, tasks=tasks, zero_shot_average=0.556,
                        zero_shot_average_stderr=0.009)
    table = quality_table([Row(result, "dense", 0.0)])
    assert "| 61.2 (± 1.1) | 50.0 (± 1.4) | 55.6 (± 0.9) |" in table
