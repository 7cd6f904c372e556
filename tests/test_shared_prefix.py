"""The shared-prefix scorer gives lm-eval's own answers: packing, the mask, and equality with HFLM."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

import flatten_hf
from flatten_hf.assets import require_asset
from flatten_hf.shared_prefix import attention_bias, group_requests, pack, shared_prefix_lm_class
from flatten_hf.zeroshot import zero_shot

from .tiny import tiny_model


def test_pack_scores_each_continuation_after_the_context_alone():
    g = pack([5, 6, 7], [[8, 9, 4], [10]])
    assert g.tokens == [5, 6, 7, 8, 9]  # a continuation's last token is only predicted, never read
    assert g.positions == [0, 1, 2, 3, 4] and g.segment == [0, 0, 0, 1, 1]
    assert g.scored == [[2, 3, 4], [2]]  # the context's last position predicts every first token
    g = pack([5, 6], [[8, 9], [10, 11]])
    assert g.positions == [0, 1, 2, 2] and g.scored == [[1, 2], [1, 3]]  # positions restart per continuation


def test_attention_bias_lets_a_continuation_see_the_context_and_itself_only():
    g = pack([5, 6], [[8, 9, 1], [10, 11, 1]])  # tokens 5 6 | 8 9 | 10 11
    bias = attention_bias([g], 7, torch.float32)[0, 0]
    seen = bias == 0
    assert seen[3].tolist() == [True, True, True, True, False, False, False]  # 9 sees 5 6 8 9
    assert seen[5].tolist() == [True, True, False, False, True, True, False]  # 11 sees 5 6 10 11, not 8 9
    assert seen[6].tolist() == [False] * 6 + [True]  # padding sees itself (no all-masked row, no NaN)
    assert (bias[~seen] == torch.finfo(torch.float32).min).all()


def test_requests_are_grouped_by_context_in_order_of_first_appearance():
    requests = [(None, [1, 2], [3]), (None, [4], [5]), (None, [1, 2], [6, 7])]
    groups = group_requests(requests)
    assert [g.requests for g in groups] == [[0, 2], [1]]
    assert groups[0].tokens == [1, 2, 6]


def _requests(seed: int) -> list:
    """Requests as lm-eval builds them: choices sharing a context, of different lengths, some of one token."""
    gen = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, 96, (n,), generator=gen).tolist()  # noqa: E731
    requests = []
    for doc in range(6):
        context = ids(3 + 4 * doc)
        for n in (1, 2, 5, 3)[: 2 + doc % 3]:
            requests.append(((f"ctx{doc}", f"cont{len(requests)}"), context, ids(n)))
    return requests


@pytest.mark.parametrize("per_layer", [False, True], ids=["stock", "flattened"])
def test_answers_equal_lm_evals_own_hflm(arch, per_layer):
    """float32: every log-likelihood within rounding of HFLM's, the same greedy flags, in request order
    (also for a Flattened model with per-layer widths, and with batches that split contexts' groups)."""
    from lm_eval.models.huggingface import HFLM

    tokenizer = AutoTokenizer.from_pretrained(require_asset("smollm2-135m"))
    model = tiny_model(arch, **({"use_sliding_window": False} if arch == "qwen2" else {}))
    if per_layer:
        calib = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(0))
        model = flatten_hf.compress(model, "flattengpt", calibration_ids=calib, num_layers=2, width_policy="global")
        assert type(model).__name__.startswith("Flattened")
    model.eval()
    requests = _requests(seed=1)
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)._loglikelihood_tokens(requests, True)
    for batch_size in (3, 64):
        ours = shared_prefix_lm_class()(pretrained=model, tokenizer=tokenizer,
                                        batch_size=batch_size)._loglikelihood_tokens(requests, True)
        assert [g for _, g in ours] == [g for _, g in theirs]
        assert torch.allclose(torch.tensor([lp for lp, _ in ours]), torch.tensor([lp for lp, _ in theirs]),
                              atol=1e-4, rtol=1e-5)


def test_zero_shot_with_shared_prefix_scores_like_lm_eval():
    """Through lm-eval's tasks and metrics: the same per-document scores on two multiple-choice tasks."""
    tokenizer = AutoTokenizer.from_pretrained(require_asset("smollm2-135m"))
    model = tiny_model("llama", vocab_size=len(tokenizer)).eval()
    tasks = ["hellaswag", "arc_easy"]
    plain, raw_plain = zero_shot(model, tokenizer, tasks, limit=6, batch_size=8, log_samples=True)
    shared, raw_shared = zero_shot(model, tokenizer, tasks, limit=6, batch_size=8, log_samples=True,
                                   shared_prefix=True)
    assert shared == plain
    for task in tasks:
        for a, b in zip(raw_plain["samples"][task], raw_shared["samples"][task]):
            assert [r[0] for r in b["filtered_resps"]] == pytest.approx([r[0] for r in a["filtered_resps"]], abs=1e-4)
