"""The evaluation suite on the real SmolLM2 (slow): lm-eval through our wrapper equals lm-eval run on its own."""

from __future__ import annotations

import json

import pytest

from flatten_hf.cli import main
from flatten_hf.zeroshot import task_manager, zero_shot

pytestmark = pytest.mark.slow


def test_zero_shot_equals_lm_evals_own_simple_evaluate(smollm2):
    """Our path (HFLM around the loaded model) and lm-eval's own model loading give identical numbers."""
    from lm_eval import simple_evaluate

    from flatten_hf.checkpoint import resolve_model_path

    model, tokenizer = smollm2
    tasks = ["piqa", "arc_easy", "winogrande"]
    ours, _ = zero_shot(model, tokenizer, tasks, limit=24, batch_size=8)
    theirs = simple_evaluate(model="hf", model_args=f"pretrained={resolve_model_path('smollm2-135m')},dtype=float32,device=cpu",
                             tasks=tasks, num_fewshot=0, limit=24, batch_size=8, task_manager=task_manager())
    for score in ours:
        r = theirs["results"][score.task]
        assert score.num_samples == 24
        assert score.acc == r["acc,none"] and score.acc_stderr == r["acc_stderr,none"], score.task
        assert score.acc_norm == r.get("acc_norm,none"), score.task
    assert ours[0].acc > 0.55  # PIQA: a real pretrained model, well above the 50% chance level


def test_request_cache_resumes_zero_shot_with_identical_scores(smollm2, tmp_path):
    """With lm-eval's request cache, a second run answers every request from the cache, unchanged."""
    from sqlitedict import SqliteDict

    model, tokenizer = smollm2
    cache = str(tmp_path / "smollm2")
    first, _ = zero_shot(model, tokenizer, ["arc_challenge"], limit=8, batch_size=8, cache=cache)
    with SqliteDict(cache + "_rank0.db") as db:
        assert len(db) == 8 * 4  # one answer per (question, choice) request
    weight = model.model.layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    weight.data.zero_()  # a cache hit never runs the model, so a broken model changes nothing
    try:
        second, _ = zero_shot(model, tokenizer, ["arc_challenge"], limit=8, batch_size=8, cache=cache)
    finally:
        weight.data.copy_(saved)
    assert second == first


def test_eval_and_bench_commands_write_json_for_the_report(smollm2, tmp_path):
    eval_json, bench_json = tmp_path / "eval.json", tmp_path / "bench.json"
    assert main(["eval", "smollm2-135m", "--ppl", "--tasks", "arc_challenge", "--limit", "8", "--seq-len", "1024",
                 "--max-windows", "16", "--json", str(eval_json)]) == 0
    result = json.loads(eval_json.read_text())["models"][0]
    assert 5 < result["perplexity"] < 40 and result["perplexity_seq_len"] == 1024
    # the second text domain (fiction), never used for calibration, is measured the same way
    assert result["other_perplexity_source"] == "lambada" and 5 < result["other_perplexity"] < 80
    assert result["tasks"][0]["task"] == "arc_challenge" and result["limit"] == 8
    # every document's score is kept for the report's paired differences, and they add up to the task's score
    scores = result["documents"]["arc_challenge"]
    assert len(scores) == 8 and set(scores) <= {"0", "1"}
    assert scores.count("1") / 8 == pytest.approx(result["tasks"][0]["acc_norm"])
    assert main(["bench", "smollm2-135m", "--repeats", "1", "--rounds", "2", "--seq-lens", "64", "--batches", "2",
                 "--new-tokens", "4", "--json", str(bench_json)]) == 0
    speed = json.loads(bench_json.read_text())["models"][0]
    assert speed["prefill_ms"]["64"]["repeats"] == 2  # one timed run in each of the two processes
    assert speed["layers"] == 30 and speed["prefill_ms"]["64"]["median"] > 0 and speed["peak_memory_mb"] > 100
    assert speed["file_bytes"] > 500e6  # fp32 SmolLM2-135M on disk
    assert main(["report", "--eval", str(eval_json), "--bench", str(bench_json), "--out", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| smollm2-135m | dense |" in report and "ppl (lambada)" in report


def test_zero_shot_on_listed_documents_scores_exactly_those(smollm2):
    """A sample of document indices (`docs` as a mapping) scores exactly those documents, keyed by their index
    in the task, which is how the paired comparisons match two models' scores document by document."""
    from flatten_hf.zeroshot import document_scores, task_sizes

    assert task_sizes() == {"piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
                            "arc_challenge": 1172}
    model, tokenizer = smollm2
    _, first = zero_shot(model, tokenizer, ["arc_challenge"], limit=8, batch_size=8, log_samples=True)
    _, listed = zero_shot(model, tokenizer, ["arc_challenge"], docs={"arc_challenge": [6, 1, 3]}, batch_size=8,
                          log_samples=True)
    everything, chosen = document_scores(first)["arc_challenge"], document_scores(listed)["arc_challenge"]
    assert chosen == {i: everything[i] for i in (1, 3, 6)}
    texts = [r["doc"]["question"] for r in listed["samples"]["arc_challenge"]]
    assert texts == [r["doc"]["question"] for r in first["samples"]["arc_challenge"] if r["doc_id"] in (1, 3, 6)]


def test_eval_shared_prefix_scores_every_document_as_lm_eval_does(smollm2, tmp_path):
    """`eval --shared-prefix` on the real SmolLM2 (float32): every document of five tasks scores as with lm-eval's
    own HF backend, and the JSON says which scorer it was, so `report` never joins the two."""
    runs = {}
    for label, extra in (("lm_eval", []), ("shared", ["--shared-prefix"])):
        path = tmp_path / f"{label}.json"
        assert main(["eval", "smollm2-135m", "--tasks", "piqa,hellaswag,winogrande,arc_easy,arc_challenge",
                     "--limit", "12", "--batch-size", "8", *extra, "--json", str(path)]) == 0
        runs[label] = json.loads(path.read_text())
    plain, shared = (runs[k]["models"][0] for k in ("lm_eval", "shared"))
    assert shared["documents"] == plain["documents"] and shared["tasks"] == plain["tasks"]
    assert shared["shared_prefix"] and not plain["shared_prefix"]
    assert runs["shared"]["settings"]["scorer"] == "shared prefix" and "scorer" not in runs["lm_eval"]["settings"]
