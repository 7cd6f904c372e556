"""FlattenGPT's math against brute force: compensation, ridge leverage, head selection, grouping."""

from __future__ import annotations

import pytest
import torch

from flatten_hf.grouping import SimilarityAccumulator, given_groups, greedy_groups, parse_groups
from flatten_hf.ops.channel_selection import ridge_leverage_scores, top_k
from flatten_hf.ops.compensation import least_squares_refit, nystrom_compensation, residual_error, ridge_lambda
from flatten_hf.ops.head_selection import greedy_selection, group_columns, head_importance, select_kv_groups
from flatten_hf.ops.width_allocation import equal_budget_splits

F64 = torch.float64


def problem(tokens=400, n=12, d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, n, generator=gen, dtype=F64) @ torch.randn(n, n, generator=gen, dtype=F64)  # correlated
    w = torch.randn(n, d, generator=gen, dtype=F64)
    return z, w


def test_refit_equals_brute_force_least_squares():
    z, w = problem()
    target = z @ w + 0.1 * torch.randn(z.shape[0], w.shape[1], dtype=F64)
    keep = torch.tensor([0, 3, 4, 7, 11])
    lam = 0.7
    got = least_squares_refit(z[:, keep].T @ z[:, keep], z[:, keep].T @ target, w[keep], lam)
    # min ||Z_S W - T||^2 + lam ||W - W_S||^2 as one stacked ordinary least-squares problem
    a = torch.cat([z[:, keep], lam**0.5 * torch.eye(len(keep), dtype=F64)])
    b = torch.cat([target, lam**0.5 * w[keep]])
    torch.testing.assert_close(got, torch.linalg.lstsq(a, b).solution)


def test_nystrom_compensation_is_lemma_3_1():
    z, w = problem()
    c = z.T @ z
    keep = torch.tensor([1, 2, 5, 6, 9])
    lam = ridge_lambda(c, 0.1)
    s = torch.eye(c.shape[0], dtype=F64)[:, keep]
    eye_k, eye = torch.eye(len(keep), dtype=F64), torch.eye(c.shape[0], dtype=F64)
    expected = torch.linalg.inv(s.T @ c @ s + lam * eye_k) @ s.T @ (c + lam * eye) @ w
    torch.testing.assert_close(nystrom_compensation(c, keep, w, lam), expected)


def test_compensation_with_nothing_removed_is_the_identity():
    z, w = problem()
    c = z.T @ z
    torch.testing.assert_close(nystrom_compensation(c, torch.arange(c.shape[0]), w, ridge_lambda(c, 1.0)), w)


def test_residual_error_from_statistics_matches_tokens():
    z, w = problem()
    target = torch.randn(z.shape[0], w.shape[1], dtype=F64)
    keep = torch.tensor([0, 2, 4])
    err = residual_error(z[:, keep].T @ z[:, keep], z[:, keep].T @ target, (target**2).sum().item(), w[keep])
    assert err == pytest.approx(((z[:, keep] @ w[keep] - target) ** 2).sum().item(), rel=1e-9)


def test_ridge_leverage_scores_match_explicit_formula():
    z, _ = problem()
    c = z.T @ z
    lam = ridge_lambda(c, 10.0)
    expected = torch.diagonal(c @ torch.linalg.inv(c + lam * torch.eye(c.shape[0], dtype=F64)))
    before = c.clone()
    torch.testing.assert_close(ridge_leverage_scores(c, lam), expected)
    torch.testing.assert_close(ridge_leverage_scores(c, lam, block=2), expected)  # panels that do not divide n
    torch.testing.assert_close(ridge_leverage_scores(c.float(), lam), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(c, before)  # shifted in place for the factorisation, restored exactly
    assert ridge_lambda(c, 10.0) == pytest.approx(10 * torch.linalg.eigvalsh(c).mean().item())


def test_top_k_keeps_index_order():
    assert top_k(torch.tensor([0.1, 0.9, 0.5, 0.8]), 2).tolist() == [1, 3]


def test_head_selection_finds_the_groups_that_produced_the_target():
    """GQA: 4 kv groups of 2 query heads x 3 dims; the target is written by groups 1 and 3 only."""
    gen = torch.Generator().manual_seed(1)
    n_rep, head_dim, d = 2, 3, 4
    z = torch.randn(500, 4 * n_rep * head_dim, generator=gen, dtype=F64)
    w_o = torch.randn(4 * n_rep * head_dim, d, generator=gen, dtype=F64)
    cols = group_columns([1, 3], n_rep, head_dim)
    assert cols.tolist() == list(range(6, 12)) + list(range(18, 24))
    target = z[:, cols] @ w_o[cols]
    for refit in (False, True):
        kept, w_new, err = select_kv_groups(z.T @ z, z.T @ target, (target**2).sum().item(), w_o, n_rep, head_dim,
                                            keep=2, lam=1e-6, refit=refit)
        assert kept == [1, 3] and err == pytest.approx(0, abs=1e-6)
        torch.testing.assert_close(w_new, w_o[cols], atol=1e-5, rtol=1e-5)


def test_head_selection_keeping_everything_without_refit_is_the_identity():
    z, w_o = problem(n=12, d=4)
    target = z @ w_o
    kept, w_new, err = select_kv_groups(z.T @ z, z.T @ target, (target**2).sum().item(), w_o, n_rep=2, head_dim=2,
                                        keep=3, lam=1.0, refit=False)
    assert kept == [0, 1, 2] and torch.equal(w_new, w_o) and err == pytest.approx(0, abs=1e-6)


def test_head_selection_of_many_groups_beats_the_ranking_when_heads_repeat():
    """Too many selections to score (C(8, 3) > max_exhaustive): groups 0 and 1 write the same, loudest thing,
    so the energy ranking keeps both and wastes one; greedy selection by the refit error keeps one of them."""
    gen = torch.Generator().manual_seed(2)
    n_rep, head_dim, d = 1, 2, 6
    z = torch.randn(600, 8 * head_dim, generator=gen, dtype=F64)
    z[:, 2:4] = z[:, 0:2]  # group 1 repeats group 0
    z[:, :4] *= 3.0
    w_o = torch.randn(8 * head_dim, d, generator=gen, dtype=F64)
    w_o[2:4] = w_o[0:2]
    target = z @ w_o
    gram, cross, tsq = z.T @ z, z.T @ target, (target**2).sum().item()
    ranked = head_importance(gram, w_o, n_rep, head_dim).topk(3).indices.sort().values.tolist()
    assert {0, 1} <= set(ranked)
    cols = group_columns(ranked, n_rep, head_dim)
    ranked_err = residual_error(gram[cols][:, cols], cross[cols], tsq,
                                least_squares_refit(gram[cols][:, cols], cross[cols], w_o[cols], 1e-6))
    kept, _, err = select_kv_groups(gram, cross, tsq, w_o, n_rep, head_dim, keep=3, lam=1e-6, refit=True,
                                    max_exhaustive=10)
    assert not {0, 1} <= set(kept) and err < 0.9 * ranked_err


def test_greedy_selection_adds_the_best_group_at_each_step():
    weights = {0: 5.0, 1: 1.0, 2: 3.0, 3: 4.0}
    error = lambda groups: -sum(weights[g] for g in groups)  # noqa: E731
    assert greedy_selection(4, 2, error) == (0, 3)
    assert greedy_selection(4, 4, error) == (0, 1, 2, 3)


def test_equal_budget_splits_spend_one_layers_parameters():
    kv_params, channel_params = 295, 2  # a key/value group costs 147.5 channels
    splits = equal_budget_splits(kv_params, channel_params, kv=3, channels=100, max_kv=21, max_channels=700)
    budget = 3 * kv_params + 100 * channel_params
    assert splits[0] == (3, 100)  # the dense split first
    assert [k for k, _ in splits] == [3, 1, 2]  # 4+ groups leave no channel; half of 3 rounds down to 1
    for k, c in splits:
        assert 0 <= budget - (k * kv_params + c * channel_params) < channel_params
    wide = equal_budget_splits(10, 1, kv=4, channels=100, max_kv=5, max_channels=120)
    assert wide == [(4, 100), (2, 120), (3, 110), (5, 90)]  # 6 groups: more than the wide block holds
    assert equal_budget_splits(10, 1, kv=4, channels=100, max_kv=5, max_channels=115)[1:] == [(3, 110), (5, 90)]


def test_greedy_grouping_scores_a_group_by_its_first_and_last_inputs():
    s = torch.eye(6)  # five layers' inputs and the final hidden state
    s[0, 1] = s[1, 0] = 0.2
    s[1, 2] = s[2, 1] = 0.9   # merge [1, 2] first
    s[2, 3] = s[3, 2] = 0.85
    s[1, 3] = s[3, 1] = 0.3   # [1, 2] + [3] is scored S[1, 3] = 0.3, not S[2, 3]
    s[3, 4] = s[4, 3] = 0.5
    s[1, 4] = s[4, 1] = 0.1
    assert greedy_groups(s, 1, group_score="input") == [[0], [1, 2], [3], [4]]
    assert greedy_groups(s, 2, group_score="input") == [[0], [1, 2], [3, 4]]
    s[1, 3] = s[3, 1] = 0.95
    assert greedy_groups(s, 2, group_score="input") == [[0], [1, 2, 3], [4]]
    assert greedy_groups(s, 2, max_group_size=2, group_score="input") == [[0], [1, 2], [3, 4]]


def test_output_group_score_rates_a_group_by_its_input_against_its_output():
    s = torch.eye(5)  # four layers' inputs and the final hidden state (index 4)
    s[0, 1] = s[1, 0] = 0.9   # layer 0 changes little: the input rule merges [0, 1] ...
    s[0, 2] = s[2, 0] = 0.1   # ... but layer 1 changes a lot: block [0, 1] as a whole does
    s[1, 2] = s[2, 1] = 0.2
    s[2, 3] = s[3, 2] = 0.6
    s[2, 4] = s[4, 2] = 0.8   # block [2, 3]: its input is close to the final state
    s[1, 3] = s[3, 1] = 0.3
    assert greedy_groups(s, 1, group_score="input") == [[0, 1], [2], [3]]
    assert greedy_groups(s, 1) == [[0], [1], [2, 3]]  # output is the default
    s[1, 4] = s[4, 1] = 0.85  # [1] + [2, 3] is then scored S[1, 4]
    assert greedy_groups(s, 2, group_score="output") == [[0], [1, 2, 3]]
    with pytest.raises(ValueError, match="group score"):
        greedy_groups(s, 1, group_score="middle")


def test_similarity_accumulator_is_mean_token_cosine():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 7, 8, generator=gen), torch.randn(2, 7, 8, generator=gen)  # float32
    acc = SimilarityAccumulator()
    acc.add([a.float()])
    acc.add([b.float()])
    expected = torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
    assert acc.matrix()[0, 1].item() == pytest.approx(expected, abs=2e-3)  # states are stored in float16


def test_l2_similarity_is_one_minus_the_relative_squared_distance():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=gen)
    states = [x, 2 * x, x + 0.1 * torch.randn(2, 5, 8, generator=gen)]
    acc, cos = SimilarityAccumulator("l2"), SimilarityAccumulator("cosine")
    for h in states:
        acc.add([h])
        cos.add([h])
    s, c = acc.matrix(), cos.matrix()
    expected = 1 - ((states[0] - states[2]) ** 2).sum() / ((states[0] ** 2).sum() * (states[2] ** 2).sum()).sqrt()
    assert s[0, 2].item() == pytest.approx(expected.item(), abs=1e-3) and s[2, 0] == s[0, 2]
    assert s[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    # doubling a state changes nothing for the cosine and a lot for l2: 1 - 1/2 = 0.5
    assert c[0, 1].item() == pytest.approx(1.0, abs=1e-3) and s[0, 1].item() == pytest.approx(0.5, abs=1e-3)


def test_norm_token_weighting_divides_each_token_by_its_rms():
    """'norm' weighs a token's error as the next RMSNorm sees it: an attention-sink token 100x larger than the
    rest counts no more than they do, where plain least squares ('uniform') lets it hold nearly all the error."""
    from flatten_hf.methods.flatten_block import token_scale

    h = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    h[:, 0] *= 100  # the sink
    assert token_scale(h, "uniform") == 1.0
    scale = token_scale(h, "norm")
    assert scale.shape == (10, 1)
    torch.testing.assert_close(scale[:, 0], h.reshape(10, 8).pow(2).mean(-1).sqrt())
    error = 0.01 * h.reshape(10, 8)  # the same 1% relative error on every token
    sink_share = {w: ((error / token_scale(h, w)) ** 2).sum(-1).view(2, 5)[:, 0].sum() / ((error / token_scale(h, w)) ** 2).sum()
                  for w in ("uniform", "norm")}
    assert sink_share["uniform"] > 0.99 and sink_share["norm"] == pytest.approx(0.2)


def test_fixed_groups_partition_every_layer():
    assert parse_groups("3-4, 12-14") == [[3, 4], [12, 13, 14]]
    assert given_groups("1-2,4-6", num_layers=8, num_merges=3) == [[0], [1, 2], [3], [4, 5, 6], [7]]


@pytest.mark.parametrize("text, merges, message", [
    ("1-2", 2, "removes 1 layers, but --ratio/--num-layers asks for 2"),
    ("6-8", 2, "names layer 8, but the model has layers 0-7"),
    ("3-3", 0, "'3-3' is not a run of two or more layers"),
    ("4-5,1-2", 2, "must be in order and must not overlap: 4-5 then 1-2"),
    ("1-3,3-4", 3, "must not overlap: 1-3 then 3-4"),
    ("one-two", 1, "comma-separated layer ranges"),
])
def test_fixed_groups_that_do_not_fit_are_named(text, merges, message):
    with pytest.raises(ValueError, match="--fixed-groups") as e:
        given_groups(text, num_layers=8, num_merges=merges)
    assert message in str(e.value)
