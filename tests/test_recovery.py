"""Recovery: distillation targets follow the merge plan; training, merging, resuming, determinism."""

from __future__ import annotations

import copy

import pytest
import torch

from flatten_hf import RecoveryConfig, ShortGPTConfig, compress, recover
from flatten_hf.distillation import changed_layers, hidden_state_loss, logit_kl, teacher_layers
from flatten_hf.plan import MergePlan, SourceSlice

from .tiny import tiny_config, tiny_model


def _plan(layers: list[list[SourceSlice]]) -> MergePlan:
    return MergePlan("test", 6, layers)


def _whole(i: int) -> SourceSlice:
    return SourceSlice.whole(i, 4, 2, 48)


def test_targets_are_the_last_original_layer_of_each_group():
    plan = _plan([[_whole(0)], [_whole(1), _whole(2)], [_whole(3)], [_whole(5)]])
    assert teacher_layers(plan) == [0, 2, 3, 5]
    # layers removed at the end: the last new layer stands in for them (it feeds the final norm)
    assert teacher_layers(_plan([[_whole(0)], [_whole(1), _whole(2)], [_whole(3)]])) == [0, 2, 5]


def test_changed_layers_are_merged_pruned_or_after_a_removal():
    config = tiny_config("llama")
    pruned = SourceSlice(3, [0, 1], [0], list(range(48)))
    plan = _plan([[_whole(0)], [_whole(1), _whole(2)], [pruned], [_whole(5)]])
    # layer 1 merges two, layer 2 lost a kv group, layer 3 follows the removed layer 4
    assert changed_layers(plan, config) == [1, 2, 3]
    assert changed_layers(_plan([[_whole(i)] for i in (0, 1, 2, 4, 5)]), config) == [3]
    assert changed_layers(_plan([[_whole(i)] for i in range(6)]), config) == []
    assert changed_layers(_plan([[_whole(i)] for i in range(4)]), config) == [3]


def test_hidden_state_loss_is_relative_per_layer():
    t = [torch.ones(1, 2, 4), 10 * torch.ones(1, 2, 4)]
    s = [torch.zeros(1, 2, 4), 10 * torch.ones(1, 2, 4)]
    assert hidden_state_loss(s, t).item() == pytest.approx(0.5)  # (1 + 0) / 2, whatever the scale
    assert hidden_state_loss([2 * x for x in t], t).item() == pytest.approx(1.0)


def test_logit_kl_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(2, 3, 11)
    assert logit_kl(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert logit_kl(logits, logits.flip(-1)).item() > 0.1


def _teacher_with_identity_layer(arch: str, identity: int = 2):
    """A teacher whose layer `identity` writes nothing (zero o_proj and down_proj): removing it is exact."""
    teacher = tiny_model(arch, num_hidden_layers=5)
    with torch.no_grad():
        teacher.model.layers[identity].self_attn.o_proj.weight.zero_()
        teacher.model.layers[identity].mlp.down_proj.weight.zero_()
    return teacher


def test_distillation_targets_align_with_the_plan(arch):
    """Removing an exact no-op layer gives a student that matches the teacher at every plan target: the
    first loss is zero. A target off by one layer (e.g. the new layer's own index) would not be."""
    teacher = _teacher_with_identity_layer(arch)
    ids = torch.randint(3, 96, (8, 12))
    student = compress(teacher, ShortGPTConfig(num_layers=1), calibration_ids=ids[:4])
    assert student.config.flatten["merge_plan"] == [[0], [1], [3], [4]]
    out = recover(student, teacher, input_ids=ids, config=RecoveryConfig(steps=1, batch_size=4, seq_len=12))
    record = out.config.flatten["method_params"]["recovery"]
    assert record["trained_layers"] == [2]
    assert record["first_loss"] == pytest.approx(0.0, abs=1e-6)
    # the same student against a teacher whose no-op layer is another one is misaligned: loss > 0
    other = _teacher_with_identity_layer(arch, identity=1)
    other.load_state_dict({**teacher.state_dict(), **{k: v for k, v in other.state_dict().items() if ".layers.1." in k}})
    student = compress(teacher, ShortGPTConfig(num_layers=1), calibration_ids=ids[:4])
    out = recover(student, other, input_ids=ids, config=RecoveryConfig(steps=1, batch_size=4, seq_len=12))
    assert out.config.flatten["method_params"]["recovery"]["first_loss"] > 1e-3


@pytest.mark.parametrize("train", ["lora", "full"])
def test_recovery_lowers_the_loss_and_trains_only_changed_layers(arch, train):
    teacher = tiny_model(arch, num_hidden_layers=5)
    ids = torch.randint(3, 96, (4 * 30, 12))
    student = compress(teacher, ShortGPTConfig(num_layers=2), calibration_ids=ids[:8])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    held_out = torch.randint(3, 96, (16, 12))
    with torch.no_grad():
        target = teacher(held_out).logits
        kl_before = logit_kl(student(held_out).logits, target).item()
    config = RecoveryConfig(steps=30, batch_size=4, seq_len=12, learning_rate=1e-2, train=train)
    out = recover(student, teacher, input_ids=ids, config=config)
    record = out.config.flatten["method_params"]["recovery"]
    with torch.no_grad():
        assert logit_kl(out(held_out).logits, target).item() < 0.9 * kl_before
    assert type(out) is type(teacher)  # adapters merged: a plain stock model again
    assert not any("lora" in k for k in out.state_dict())
    trained = record["trained_layers"]
    for key, value in out.state_dict().items():
        in_trained = any(key.startswith(f"model.layers.{i}.") for i in trained)
        changed = not torch.equal(value, before[key])
        # LoRA adapts the projections' weights only; everything outside the trained layers stays bit-identical
        assert changed == (in_trained and (train == "full" or key.endswith("proj.weight"))), key
    assert out.config.flatten["merge_plan"] == student.config.flatten["merge_plan"]


def test_interrupted_recovery_resumes_to_the_same_weights(tmp_path):
    teacher = tiny_model("qwen2", num_hidden_layers=5)
    ids = torch.randint(3, 96, (3 * 8, 12))
    student = compress(teacher, ShortGPTConfig(num_layers=1), calibration_ids=ids[:6])
    config = RecoveryConfig(steps=8, batch_size=3, seq_len=12, learning_rate=5e-3, save_steps=3)
    straight = recover(copy.deepcopy(student), teacher, input_ids=ids, config=config)

    calls = {"n": 0}

    def crash(module, args, output):
        calls["n"] += 1
        if calls["n"] == 8:  # the teacher's 8th forward: step 7, after the state of step 6 was written
            raise KeyboardInterrupt

    handle = teacher.lm_head.register_forward_hook(crash)
    with pytest.raises(KeyboardInterrupt):
        recover(copy.deepcopy(student), teacher, input_ids=ids, config=config, state_dir=tmp_path / "state")
    handle.remove()
    assert torch.load(tmp_path / "state" / "recovery_state.pt", weights_only=True)["step"] == 6
    resumed = recover(copy.deepcopy(student), teacher, input_ids=ids, config=config, state_dir=tmp_path / "state")
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
    assert (resumed.config.flatten["method_params"]["recovery"]["first_loss"]
            == straight.config.flatten["method_params"]["recovery"]["first_loss"])

    other = RecoveryConfig(steps=8, batch_size=3, seq_len=12, learning_rate=1e-3, save_steps=3)
    with pytest.raises(ValueError, match="different options \\(learning_rate\\)"):
        recover(copy.deepcopy(student), teacher, input_ids=ids, config=other, state_dir=tmp_path / "state")


def test_recovery_inputs_are_checked():
    teacher = tiny_model("llama", num_hidden_layers=5)
    with pytest.raises(ValueError, match="has no merge plan"):
        recover(tiny_model("llama"), teacher, input_ids=torch.zeros(4, 8, dtype=torch.long))
    student = compress(teacher, ShortGPTConfig(num_layers=1), calibration_ids=torch.randint(3, 96, (2, 8)))
    with pytest.raises(ValueError, match="teacher has 4 layers but the plan was made from a model with 5"):
        recover(student, tiny_model("llama"), input_ids=torch.zeros(4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="need more"):
        recover(student, teacher, input_ids=torch.zeros(4, 8, dtype=torch.long),
                config=RecoveryConfig(steps=2, batch_size=4, seq_len=8))
    with pytest.raises(ValueError, match="train must be"):
        RecoveryConfig(train="qlora")
