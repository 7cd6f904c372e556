"""CoMe: channel sensitivity, BI shares, GQA-correct concatenation and progressive merging."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from flatten_hf import CoMeConfig, compress
from flatten_hf.adapters import new_decoder_layer
from flatten_hf.calibration import LayerwiseRunner
from flatten_hf.methods.come import measure_layer, merged_state, select_pair_sources
from flatten_hf.ops.head_selection import query_heads
from flatten_hf.ops.share_allocation import distribute_and_round, influence_shares
from flatten_hf.plan import SourceSlice

from .tiny import tiny_model


def test_distribute_and_round_keeps_the_original_width():
    assert distribute_and_round([0.5308, 0.4692], 2) == [2, 0]  # floor(0.94) = 0, the largest share takes the rest
    assert distribute_and_round([0.3, 0.7], 1536) == [460, 1076]
    assert distribute_and_round([0.25, 0.25, 0.5], 7) == [1, 1, 5]
    for shares in ([0.1, 0.9], [0.5, 0.5], [0.33, 0.33, 0.34]):
        assert sum(distribute_and_round(shares, 96)) == 96


def test_influence_shares_are_proportional_to_block_influence():
    assert influence_shares([0.2, 0.6]) == pytest.approx([0.25, 0.75])
    assert influence_shares([0.0, 0.0]) == [0.5, 0.5]


def test_query_heads_are_the_contiguous_heads_of_each_kv_group():
    # 8 query heads on 2 kv heads: kv head 1 owns query heads 4..7 (repeat_kv), not every other head.
    assert query_heads([1], n_rep=4) == [4, 5, 6, 7]
    assert query_heads([0, 2], n_rep=3) == [0, 1, 2, 6, 7, 8]
    assert query_heads([], n_rep=2) == []


def _layer_kwargs(model, ids):
    runner = LayerwiseRunner(model, ids, batch_size=ids.shape[0])
    return runner, runner.layer_kwargs[0]["full_attention"]


@torch.no_grad()
def _brute_force_attention_output(layer, x, position_embeddings, n_heads, n_kv, head_dim):
    """Causal GQA attention before o_proj, head by head and token by token: query head h reads
    key/value head h // (n_heads // n_kv), as repeat_kv does."""
    attn = layer.self_attn
    u = layer.input_layernorm(x)
    b, length, _ = u.shape
    q = attn.q_proj(u).view(b, length, n_heads, head_dim)
    k = attn.k_proj(u).view(b, length, n_kv, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3's per-head query/key norms
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    v = attn.v_proj(u).view(b, length, n_kv, head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
    out = torch.zeros(b, length, n_heads * head_dim, dtype=torch.float64)
    for h in range(n_heads):
        g = h // (n_heads // n_kv)
        for t in range(length):
            scores = (q[:, h, t, None, :] @ k[:, g, : t + 1].transpose(-1, -2)).squeeze(1).double() / math.sqrt(head_dim)
            out[:, t, h * head_dim:(h + 1) * head_dim] = (scores.softmax(-1)[:, None, :] @ v[:, g, : t + 1].double())[:, 0]
    return out


@torch.no_grad()
def test_sensitivities_match_a_brute_force_computation(arch):
    model = tiny_model(arch, num_attention_heads=8, num_key_value_heads=2, head_dim=8, attn="eager")
    ids = torch.randint(3, 96, (3, 5))  # shorter than Qwen2's sliding window: every layer attends fully
    runner, kwargs = _layer_kwargs(model, ids)
    layer = model.model.layers[1]
    x = runner.run(model.model.layers[0])[0]
    stats, outputs = measure_layer(layer, "full_attention", runner, [x], n_rep=4, head_dim=8)
    o = _brute_force_attention_output(layer, x, kwargs["position_embeddings"], 8, 2, 8)
    o_norms = layer.self_attn.o_proj.weight.abs().sum(0).double()
    per_channel = (o.abs() * o_norms).reshape(-1, 64).mean(0)
    expected_kv = torch.stack([per_channel[[c for c in range(64) if (c // 8) // 4 == g]].mean() for g in range(2)])
    torch.testing.assert_close(stats.kv_sensitivity, expected_kv, rtol=1e-4, atol=1e-7)
    h1 = x + layer.self_attn.o_proj(o.float())
    u = layer.post_attention_layernorm(h1)
    a = layer.mlp.act_fn(layer.mlp.gate_proj(u)) * layer.mlp.up_proj(u)
    expected_mlp = (a.abs().double() * layer.mlp.down_proj.weight.abs().sum(0).double()).reshape(-1, a.shape[-1]).mean(0)
    torch.testing.assert_close(stats.channel_sensitivity, expected_mlp, rtol=1e-4, atol=1e-7)
    expected_bi = 1 - F.cosine_similarity(x, outputs[0], dim=-1).mean().item()
    assert stats.block_influence == pytest.approx(expected_bi, abs=1e-6)


@torch.no_grad()
def test_merged_layer_is_the_sum_of_the_kept_heads_and_channels(arch):
    """Brute force: with folded norms, the concatenated layer computes exactly each member's kept query
    heads with their own key/value head, and its kept MLP channels (other heads/channels zeroed)."""
    model = tiny_model(arch, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4, head_dim=8)
    ids = torch.randint(3, 96, (2, 5))
    runner, kwargs = _layer_kwargs(model, ids)
    x = runner.hidden[0]
    sources = [SourceSlice(0, query_heads([2], 2), [2], [1, 5, 7, 20]),
               SourceSlice(1, query_heads([0, 1, 3], 2), [0, 1, 3], [c for c in range(48) if c not in (1, 5, 7, 20)])]
    merged = new_decoder_layer(model.config, 0, 8, 4, 48, flattened=True)  # Qwen3: a q/k norm row per head
    merged.load_state_dict(merged_state(model, sources, [0.4, 0.6], "fold"))
    merged.eval()

    masked = []
    for s in sources:
        layer = copy.deepcopy(model.model.layers[s.layer])
        dropped_q = [h for h in range(8) if h not in s.q_heads]
        for h in dropped_q:
            layer.self_attn.o_proj.weight[:, h * 8:(h + 1) * 8] = 0
        dropped_c = [c for c in range(48) if c not in s.mlp_channels]
        layer.mlp.down_proj.weight[:, dropped_c] = 0
        masked.append(layer)
    h1 = x + sum(m.self_attn(m.input_layernorm(x), **kwargs)[0] for m in masked)
    expected = h1 + sum(m.mlp(m.post_attention_layernorm(h1)) for m in masked)
    out = merged(x, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    # The released code's mask.repeat(n_rep) tiling pairs query heads with the wrong kv heads: not equal.
    tiled = [SourceSlice(0, [h for h in range(8) if h % 4 == 2], [2], sources[0].mlp_channels), sources[1]]
    wrong = new_decoder_layer(model.config, 0, 8, 4, 48, flattened=True)
    wrong.load_state_dict(merged_state(model, tiled, [0.4, 0.6], "fold"))
    wrong_out = wrong.eval()(x, **kwargs)
    wrong_out = wrong_out[0] if isinstance(wrong_out, tuple) else wrong_out
    assert (wrong_out - expected).abs().max() > 1e-2


def test_pair_sources_follow_shares_and_sensitivity():
    from flatten_hf.methods.come import _Stats

    stats = [_Stats(0.1, torch.tensor([0.3, 0.1, 0.9]), torch.arange(10.0)),
             _Stats(0.3, torch.tensor([0.5, 0.7, 0.2]), -torch.arange(10.0))]
    sources, shares = select_pair_sources([4, 5], stats, num_kv_heads=3, intermediate_size=10, n_rep=2)
    assert shares == pytest.approx([0.25, 0.75])
    assert [s.kv_heads for s in sources] == [[], [0, 1, 2]]  # floor(3 * 0.25) = 0
    assert [s.q_heads for s in sources] == [[], [0, 1, 2, 3, 4, 5]]
    assert sources[0].mlp_channels == [8, 9] and sources[1].mlp_channels == list(range(8))


def _quiet_layers(model, layers, scale=1e-3):
    with torch.no_grad():
        for i in layers:
            model.model.layers[i].self_attn.o_proj.weight.mul_(scale)
            model.model.layers[i].mlp.down_proj.weight.mul_(scale)


@torch.no_grad()
def test_first_merge_is_the_closest_pair_with_bi_shares(arch):
    model = tiny_model(arch, num_hidden_layers=6, attn="eager")
    _quiet_layers(model, [2, 3], scale=0.05)
    ids = torch.randint(3, 96, (4, 5))
    hidden = model(ids, output_hidden_states=True).hidden_states  # hidden[k] enters layer k (k < 6)
    out = compress(model, CoMeConfig(num_layers=1), calibration_ids=ids)
    plan = out.config.flatten
    assert plan["merge_plan"] == [[0], [1], [2, 3], [4], [5]]
    merge = plan["method_params"]["merges"][0]
    last = lambda a, b: (torch.arccos(F.cosine_similarity(a[:, -1], b[:, -1], dim=-1).clamp(-1, 1)) / math.pi).mean()
    assert merge["distance"] == pytest.approx(last(hidden[2], hidden[4]).item(), abs=1e-5)
    for k in range(4):  # pairs whose output is not behind the final norm
        assert last(hidden[k], hidden[k + 2]).item() >= merge["distance"] - 1e-6
    bi = [1 - F.cosine_similarity(hidden[i], hidden[i + 1], dim=-1).mean().item() for i in (2, 3)]
    assert merge["shares"] == pytest.approx([b / sum(bi) for b in bi], abs=1e-4)


@torch.no_grad()
def test_merging_is_progressive_on_the_current_model(arch):
    """The second merge is scored on the once-merged model, not on the dense one."""
    model = tiny_model(arch, num_hidden_layers=6, attn="eager")
    ids = torch.randint(3, 96, (4, 5))
    once = compress(model, CoMeConfig(num_layers=1), calibration_ids=ids)
    twice = compress(model, CoMeConfig(num_layers=2), calibration_ids=ids)
    first, second = twice.config.flatten["method_params"]["merges"]
    assert first == once.config.flatten["method_params"]["merges"][0]
    groups = once.config.flatten["merge_plan"]
    k = next(i for i, g in enumerate(groups) if g == second["layers"][:1])
    hidden = once(ids, output_hidden_states=True).hidden_states
    if k + 2 < len(groups):  # the last hidden state is behind the final norm
        cos = F.cosine_similarity(hidden[k][:, -1], hidden[k + 2][:, -1], dim=-1).clamp(-1, 1)
        assert second["distance"] == pytest.approx((torch.arccos(cos) / math.pi).mean().item(), abs=1e-5)
    assert all(len(g) <= 2 for g in twice.config.flatten["merge_plan"])
    flat = [i for g in twice.config.flatten["merge_plan"] for i in g]
    assert flat == list(range(6))  # every original layer once, in order
    assert type(twice).__name__ == type(model).__name__  # the original width: a stock checkpoint


@torch.no_grad()
def test_averaged_and_folded_norms_agree_when_the_norms_are_equal(arch):
    model = tiny_model(arch, num_hidden_layers=4)
    for layer in model.model.layers[1:]:
        layer.load_state_dict({**layer.state_dict(), **{k: v for k, v in model.model.layers[0].state_dict().items()
                                                        if "layernorm" in k}})
    ids = torch.randint(3, 96, (4, 6))
    folded = compress(model, CoMeConfig(num_layers=1, norms="fold"), calibration_ids=ids)
    averaged = compress(model, CoMeConfig(num_layers=1, norms="average"), calibration_ids=ids)
    assert folded.config.flatten["merge_plan"] == averaged.config.flatten["merge_plan"]
    torch.testing.assert_close(folded(ids).logits, averaged(ids).logits, rtol=1e-4, atol=1e-4)
    # with different norms the two differ (the average is only an approximation)
    different = tiny_model(arch, num_hidden_layers=4)
    a = compress(different, CoMeConfig(num_layers=1, norms="fold"), calibration_ids=ids)(ids).logits
    b = compress(different, CoMeConfig(num_layers=1, norms="average"), calibration_ids=ids)(ids).logits
    assert (a - b).abs().max() > 1e-3


def test_come_removes_at_most_half_of_the_layers():
    model = tiny_model("llama", num_hidden_layers=4)
    with pytest.raises(ValueError, match="removes at most 2 of 4 layers; 3 were asked"):
        compress(model, CoMeConfig(num_layers=3), calibration_ids=torch.randint(3, 96, (2, 5)))


def test_bad_options_are_explained():
    with pytest.raises(ValueError, match="norms must be one of"):
        CoMeConfig(ratio=0.2, norms="mean")
    with pytest.raises(ValueError, match="pair_score must be one of"):
        CoMeConfig(ratio=0.2, pair_score="cosine")


@torch.no_grad()
def test_a_member_that_writes_nothing_gets_no_share_and_the_merge_is_exact(arch):
    """A layer with zero output projections has Block Influence 0, so its partner keeps every head and
    channel: the merged model computes exactly what the dense one does."""
    model = tiny_model(arch, num_hidden_layers=6)
    model.model.layers[3].self_attn.o_proj.weight.zero_()
    model.model.layers[3].mlp.down_proj.weight.zero_()
    ids = torch.randint(3, 96, (4, 5))
    for norms in ("fold", "average"):
        merged = compress(model, CoMeConfig(num_layers=1, norms=norms), calibration_ids=ids)
        merge = merged.config.flatten["method_params"]["merges"][0]
        assert 3 in merge["layers"]
        assert merge["shares"][merge["layers"].index(3)] == 0.0
        if norms == "fold":  # averaged norms rescale the kept layer's input: only the folded merge is exact
            torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
