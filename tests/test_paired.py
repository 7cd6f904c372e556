"""Per-document zero-shot scores and the paired difference of two models' averages (flatten_hf.zeroshot)."""

from __future__ import annotations

import math

import pytest

from flatten_hf.zeroshot import document_scores, paired_difference, sample_documents


def test_paired_difference_is_the_mean_of_per_document_differences_with_their_stderr():
    a = {"piqa": {0: 1.0, 1: 0.0, 2: 1.0, 3: 1.0}, "arc_easy": {0: 1.0, 1: 1.0, 2: 0.0}}
    b = {"piqa": {0: 1.0, 1: 1.0, 2: 0.0, 3: 1.0}, "arc_easy": {0: 0.0, 1: 1.0, 2: 0.0}}
    d = paired_difference(a, b)
    # piqa: d = [0, -1, 1, 0], mean 0, sample variance 2/3; arc_easy: d = [1, 0, 0], mean 1/3, variance 1/3
    assert d.per_task == {"piqa": 0.0, "arc_easy": pytest.approx(1 / 3)}
    assert d.difference == pytest.approx(1 / 6)  # tasks weigh equally, as in the five-task average
    assert d.stderr == pytest.approx(math.sqrt((2 / 3) / 4 + (1 / 3) / 3) / 2)
    assert d.documents == 7 and d.z == pytest.approx(d.difference / d.stderr)
    # the difference is antisymmetric, its error is not
    back = paired_difference(b, a)
    assert back.difference == pytest.approx(-d.difference) and back.stderr == pytest.approx(d.stderr)


def test_paired_difference_of_identical_models_is_zero_and_uses_shared_documents_only():
    a = {"piqa": {0: 1.0, 1: 0.0, 2: 1.0}}
    same = paired_difference(a, {"piqa": {0: 1.0, 1: 0.0, 2: 1.0, 7: 0.0}})
    assert (same.difference, same.stderr, same.z, same.documents) == (0.0, 0.0, 0.0, 3)
    with pytest.raises(ValueError, match="share no task"):
        paired_difference(a, {"hellaswag": {0: 1.0}})
    with pytest.raises(ValueError, match="fewer than 2 documents"):
        paired_difference(a, {"piqa": {0: 1.0, 9: 1.0}})


def test_document_scores_read_the_headline_metric_of_lm_eval_records():
    records = {"hellaswag": [{"doc_id": 1, "acc": 0.0, "acc_norm": 1.0}, {"doc_id": 0, "acc": 1.0, "acc_norm": 0.0}],
               "winogrande": [{"doc_id": 0, "acc": 1.0}]}
    scores = document_scores({"samples": records}, tasks=("hellaswag", "winogrande"))
    assert scores == {"hellaswag": {1: 1.0, 0: 0.0}, "winogrande": {0: 1.0}}  # acc_norm where the task has it
    with pytest.raises(ValueError, match="log_samples=True"):
        document_scores({"results": {}})


def test_sample_documents_are_seeded_disjoint_sorted_and_spread_over_the_task():
    sizes = {"hellaswag": 10042, "piqa": 1838}
    validation, test = sample_documents(sizes, 0, 300), sample_documents(sizes, 300, 600)
    assert validation == sample_documents(sizes, 0, 300)  # the same seed gives the same sample on every run
    assert sample_documents(sizes, 0, 300, seed=1) != validation
    for task, size in sizes.items():
        assert len(validation[task]) == len(test[task]) == 300
        assert validation[task] == sorted(validation[task]) and 0 <= validation[task][0] and validation[task][-1] < size
        assert set(validation[task]).isdisjoint(test[task])
    # HellaSwag's first 3,243 documents are its ActivityNet contexts: a sample must reach the WikiHow rest (68%)
    wikihow = sum(i >= 3243 for i in validation["hellaswag"]) / 300
    assert 0.55 < wikihow < 0.8
    assert sample_documents({"piqa": 1838}, 0, 5000) == {"piqa": list(range(1838))}  # the whole task, once
    with pytest.raises(ValueError, match="start <= stop"):
        sample_documents(sizes, 300, 0)
