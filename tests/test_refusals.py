"""The catalogue of what flatten-hf refuses and guarantees (issue 20), one test per case, by category.

Every bad input must end in one line naming the argument or field and what to do (exit 2 from the
CLI, `ValueError` from Python), before any compute where it can be checked; nothing of the user's
is deleted; nothing half-written or hidden is left behind; a broken merge plan never loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

import flatten_hf
from flatten_hf import FlattenLlamaConfig
from flatten_hf.checkpoint import clean_stale_siblings, load_model, save_compressed
from flatten_hf.cli import main
from flatten_hf.plan import MergePlan

from .tiny import tiny_model

CALIB = ["--calib-samples", "4", "--seq-len", "32", "--batch-size", "4"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random LLaMA with SmolLM2's tokenizer (so the CLI can calibrate on real text), saved as a folder."""
    from flatten_hf.assets import require_asset

    folder = tmp_path_factory.mktemp("tiny") / "model"
    tokenizer = AutoTokenizer.from_pretrained(require_asset("smollm2-135m"))
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def compressed(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compressed") / "shortgpt"
    assert main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(out), *CALIB]) == 0
    return out


def one_line_error(capsys, code: int, *words: str) -> str:
    """Assert a one-line error (no traceback) with exit status 2 that contains `words`; return it."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # progress bars are no error
    assert "Traceback" not in err and len(lines) == 1, err
    err = lines[0]
    for word in words:
        assert word in err, err
    return err


def siblings(folder: Path) -> list[str]:
    """Hidden flatten-hf staging / set-aside folders next to `folder`."""
    return [p.name for p in folder.parent.iterdir() if ".flatten-hf-" in p.name]


# --- data loss: --out never costs the user a file ---------------------------------------------------------------

def test_overwrite_refuses_an_out_holding_other_files(checkpoint, compressed, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(out), "--overwrite", *CALIB])
    one_line_error(capsys, code, "--out", "not part of a checkpoint (notes.txt)")
    assert (out / "notes.txt").read_text() == "keep me"


def test_overwrite_refuses_a_checkpoint_folder_with_extra_files(checkpoint, compressed, tmp_path, capsys):
    out = tmp_path / "ckpt"
    out.mkdir()
    for f in compressed.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    (out / "train.py").write_text("# the user's")
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(out), "--overwrite", *CALIB])
    one_line_error(capsys, code, "train.py")
    assert (out / "train.py").exists()


def test_out_is_the_working_directory(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work.txt").write_text("keep me")
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", ".", "--overwrite", *CALIB])
    one_line_error(capsys, code, "working directory")
    assert (tmp_path / "work.txt").exists()


def test_out_is_a_parent_of_the_working_directory(checkpoint, tmp_path, monkeypatch, capsys):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", "..", "--overwrite", *CALIB])
    one_line_error(capsys, code, "working directory or a parent")


def test_out_is_the_input_model(checkpoint, capsys):
    before = sorted(p.name for p in checkpoint.iterdir())
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(checkpoint), "--overwrite", *CALIB])
    one_line_error(capsys, code, "would replace the input model")
    assert sorted(p.name for p in checkpoint.iterdir()) == before


def test_out_contains_the_input_model(compressed, capsys, tmp_path):
    code = main(["recover", str(compressed), "--out", str(compressed.parent), "--overwrite"])
    one_line_error(capsys, code, "would replace the input model")
    assert (compressed / "config.json").exists()


def test_out_is_a_file(checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(tmp_path / "file"), *CALIB])
    one_line_error(capsys, code, "is a file")


def test_out_below_a_file(checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(tmp_path / "file" / "sub"), *CALIB])
    one_line_error(capsys, code, "is a file, so no folder can be made under it")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_out_in_an_unwritable_folder_fails_before_compute(checkpoint, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(locked / "out"), *CALIB])
    one_line_error(capsys, code, "cannot write to")


def test_overwrite_replaces_a_previous_checkpoint_and_leaves_nothing_beside_it(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(out), *CALIB]) == 0
    assert main(["compress", str(checkpoint), "--num-layers", "2", "--out", str(out), "--overwrite", *CALIB]) == 0
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert siblings(out) == []


def test_a_failed_replacement_restores_the_previous_checkpoint(compressed, tmp_path, monkeypatch):
    out = tmp_path / "out"
    model, tokenizer = load_model(str(compressed))
    save_compressed(model, out, tokenizer)
    before = (out / "model.safetensors").read_bytes()
    real_replace, calls = os.replace, []

    def failing_second_move(src, dst):  # the old checkpoint moves aside, then the new one fails to land
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr("flatten_hf.checkpoint.os.replace", failing_second_move)
    with pytest.raises(OSError, match="disk full"):
        save_compressed(model, out, tokenizer, overwrite=True)
    monkeypatch.undo()
    assert (out / "model.safetensors").read_bytes() == before
    assert siblings(out) == []


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_staging(compressed, tmp_path):
    out = tmp_path / "out"
    model, tokenizer = load_model(str(compressed))
    save_compressed(model, out, tokenizer)

    class BrokenTokenizer:
        def save_pretrained(self, folder):
            raise RuntimeError("tokenizer failed")

    with pytest.raises(RuntimeError, match="tokenizer failed"):
        save_compressed(model, out, BrokenTokenizer(), overwrite=True)
    assert (out / "tokenizer.json").exists() and siblings(out) == []


# --- leftovers and signals ---------------------------------------------------------------------------------------

SIGNAL_SCRIPT = """
import os, signal, sys
import flatten_hf.checkpoint as checkpoint
from flatten_hf import FlattenLlamaConfig
from flatten_hf.cli import main

# As in a terminal: a background or nohup parent (CI) may hand SIGINT down ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

def interrupt_mid_save(path):  # called after the weights are in the staging folder
    os.kill(os.getpid(), signal.{signal})
checkpoint.add_v4_rope_keys = interrupt_mid_save
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_during_the_save_exits_cleanly_and_leaves_nothing(checkpoint, tmp_path, name, code):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT.format(signal=name), "compress", str(checkpoint),
                           "--num-layers", "1", "--out", str(out), *CALIB], capture_output=True, text=True)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and "nothing half-written" in proc.stderr
    assert not out.exists() and siblings(out) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_later_run_removes_a_killed_runs_staging_folder(compressed, tmp_path, caplog):
    stale = tmp_path / f".out.flatten-hf-staging-{_dead_pid()}-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    model, tokenizer = load_model(str(compressed))
    save_compressed(model, tmp_path / "out", tokenizer)
    assert not stale.exists() and "left behind by an interrupted run" in caplog.text


def test_a_killed_runs_set_aside_checkpoint_is_put_back(tmp_path):
    aside = tmp_path / f".out.flatten-hf-previous-{_dead_pid()}-abc"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    clean_stale_siblings(tmp_path)
    assert (tmp_path / "out" / "config.json").exists() and not aside.exists()


def test_a_live_runs_staging_folder_is_left_alone(tmp_path):
    live = tmp_path / f".out.flatten-hf-staging-{os.getpid()}-abc"
    live.mkdir()
    clean_stale_siblings(tmp_path)
    assert live.exists()


def test_user_folders_that_look_hidden_are_never_touched(tmp_path):
    theirs = tmp_path / ".out.tmp-mine"
    theirs.mkdir()
    clean_stale_siblings(tmp_path)
    assert theirs.exists()


# --- plans: every checkpoint that carries one is checked on load and in every command -----------------------------

def _edit_plan(folder: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "edited"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


PLAN_EDITS = {
    "source layer out of range": (lambda c: c["flatten"]["layers"][0]["sources"][0].update(layer=99),
                                  "flatten.layers[0].sources[0].layer is 99"),
    "negative source layer": (lambda c: c["flatten"]["layers"][1]["sources"][0].update(layer=-1),
                              "flatten.layers[1].sources[0].layer is -1"),
    "channels past the width": (lambda c: c["flatten"]["layers"][0]["sources"][0].update(mlp_channels="0-47,48"),
                                "mlp_channels names 48, outside the original layer's [0, 48)"),
    "heads past the width": (lambda c: c["flatten"]["layers"][2]["sources"][0].update(q_heads="1-4"),
                             "flatten.layers[2].sources[0].q_heads names 4"),
    "unknown format version": (lambda c: c["flatten"].update(format_version=7), "flatten.format_version is 7"),
    "plan is a string": (lambda c: c.update(flatten="oops"), "must be a mapping"),
    "malformed range": (lambda c: c["flatten"]["layers"][0]["sources"][0].update(kv_heads="0-x"),
                        "kv_heads: '0-x' is not an index"),
    "too few layers": (lambda c: c["flatten"]["layers"].pop(), "one entry per decoder layer"),
    "merge_plan disagrees": (lambda c: c["flatten"].update(merge_plan=[[0], [1], [3]]), "merge_plan disagrees"),
    "stock plan with narrower layer": (
        lambda c: c["flatten"]["layers"][0]["sources"][0].update(mlp_channels="0-39"),
        "needs the Flattened classes"),
}


@pytest.mark.parametrize("case", PLAN_EDITS)
def test_a_broken_plan_is_refused_on_load_and_by_info(compressed, tmp_path, capsys, case):
    edit, message = PLAN_EDITS[case]
    folder = _edit_plan(compressed, tmp_path, edit)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_model(str(folder))
    one_line_error(capsys, main(["info", str(folder)]), message)
    one_line_error(capsys, main(["ppl", str(folder), "--max-windows", "1"]), message)


def test_a_boolean_in_a_per_layer_list_is_refused():
    with pytest.raises(ValueError, match=r"intermediate_size_per_layer\[1\] must be a positive integer, got True"):
        FlattenLlamaConfig(num_hidden_layers=2, intermediate_size_per_layer=[8, True])


# A random per-layer config or plan either builds or raises ValueError; never KeyError, TypeError, ZeroDivisionError.
_index_lists = st.one_of(st.text(alphabet="0123456789-,x ", max_size=8),
                         st.lists(st.one_of(st.integers(-2, 9), st.booleans(), st.text(max_size=2)), max_size=5),
                         st.integers(), st.none())
_sources = st.fixed_dictionaries({}, optional={
    "layer": st.one_of(st.integers(-1, 4), st.booleans(), st.text(max_size=2)),
    "q_heads": _index_lists, "kv_heads": _index_lists, "mlp_channels": _index_lists})
_plans = st.fixed_dictionaries({}, optional={
    "format_version": st.one_of(st.just(1), st.integers(0, 3), st.text(max_size=2)),
    "method": st.one_of(st.just("shortgpt"), st.integers()),
    "source_num_hidden_layers": st.one_of(st.integers(-1, 5), st.booleans(), st.none()),
    "layers": st.one_of(st.lists(st.one_of(st.fixed_dictionaries({"sources": st.lists(_sources, max_size=3)}),
                                           st.integers(), st.dictionaries(st.text(max_size=3), st.integers())),
                                 max_size=3), st.text(max_size=3)),
    "merge_plan": st.lists(st.lists(st.integers(0, 4), max_size=2), max_size=3)})
_per_layer = st.one_of(st.none(), st.lists(st.one_of(st.integers(-1, 8), st.booleans(), st.floats(0, 8)), max_size=3),
                       st.integers())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.one_of(_plans, st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2)),
       heads=_per_layer, kv=_per_layer, mlp=_per_layer, layers=st.integers(1, 3))
def test_random_per_layer_lists_and_plans_load_or_raise_value_error(plan, heads, kv, mlp, layers):
    try:
        config = FlattenLlamaConfig(num_hidden_layers=layers, hidden_size=32, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=8, flatten=plan,
                                    num_attention_heads_per_layer=heads, num_key_value_heads_per_layer=kv,
                                    intermediate_size_per_layer=mlp)
    except ValueError:
        return
    # what loads is consistent: one positive width per layer, GQA groups whole
    for field in ("num_attention_heads_per_layer", "num_key_value_heads_per_layer", "intermediate_size_per_layer"):
        values = getattr(config, field)
        assert len(values) == layers and all(type(v) is int and v > 0 for v in values)
    assert all(h % k == 0 for h, k in zip(config.num_attention_heads_per_layer, config.num_key_value_heads_per_layer))
    if plan:
        MergePlan.from_config(config)


# --- provenance: compressing a compressed model yields one plan over the ORIGINAL layers --------------------------

IDS = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("second", ["shortgpt", "replaceme", "flattengpt", "come"])
def test_plans_compose_over_the_original_layers(arch, second):
    base = tiny_model(arch, num_hidden_layers=6)
    first = flatten_hf.compress(base, "flattengpt", calibration_ids=IDS, num_layers=2, width_policy="global",
                                stock_if_uniform=False, base_model="org/base")
    again = flatten_hf.compress(first, second, calibration_ids=IDS, num_layers=1, base_model="out/first")
    plan = MergePlan.from_config(again.config)  # checked against the original widths
    assert plan.base_model == "org/base" and plan.source_num_hidden_layers == 6 and plan.method == second
    assert len(plan.layers) == 3
    assert [h["method"] for h in plan.method_params["history"]] == ["flattengpt"]
    assert plan.method_params["history"][0]["checkpoint"] == "out/first"
    assert plan.per_layer_sizes() == {f: list(getattr(again.config, f, [])) or [getattr(again.config, g)] * 3
                                      for f, g in (("num_attention_heads_per_layer", "num_attention_heads"),
                                                   ("num_key_value_heads_per_layer", "num_key_value_heads"),
                                                   ("intermediate_size_per_layer", "intermediate_size"))}
    covered = sorted({s.layer for sources in plan.layers for s in sources})
    assert set(covered) <= set(range(6))


def test_a_composed_selection_plan_rebuilds_the_model_from_the_original(arch):
    """Depth-only FlattenGPT then ShortGPT are pure selections: the composed plan alone, applied to the
    ORIGINAL weights, must give the final model exactly."""
    from flatten_hf.assemble import assemble, plan_weights

    base = tiny_model(arch, num_hidden_layers=6)
    wide = flatten_hf.compress(base, "flattengpt", calibration_ids=IDS, num_layers=2, prune=False)
    final = flatten_hf.compress(wide, "shortgpt", calibration_ids=IDS, num_layers=1)
    plan = MergePlan.from_config(final.config)
    rebuilt = assemble(base, plan, plan_weights(base, plan), stock_if_uniform=False)
    for (name, a), (_, b) in zip(sorted(final.state_dict().items()), sorted(rebuilt.state_dict().items())):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_compressing_a_checkpoint_keeps_the_original_base_model(checkpoint, compressed, tmp_path, capsys):
    out = tmp_path / "twice"
    assert main(["compress", str(compressed), "--num-layers", "1", "--out", str(out), *CALIB]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    plan = json.loads((out / "config.json").read_text())["flatten"]
    assert plan["base_model"] == str(checkpoint) and plan["source_num_hidden_layers"] == 4
    assert plan["method_params"]["history"][0]["checkpoint"] == str(compressed)
    assert f"base model: {checkpoint}" in first_line and "layers: 4 -> 2" in first_line
    card = (out / "README.md").read_text()  # reproduced in two steps from the original model
    assert f"flatten-hf compress {checkpoint} --method shortgpt --num-layers 1" in card
    assert "flatten-hf compress out/twice-step1 --method shortgpt --num-layers 1" in card


# --- one line for every ordinary mistake ----------------------------------------------------------------------------

@pytest.mark.parametrize("model, message", [
    ("/no/such/folder", "no such folder"),
    ("./relative/missing", "no such folder"),
    ("smollm2-13m", "Did you mean 'smollm2-135m'?"),
    ("qwen", "unknown model 'qwen'"),
])
def test_a_model_that_does_not_exist(tmp_path, capsys, model, message):
    code = main(["compress", model, "--ratio", "0.2", "--out", str(tmp_path / "out")])
    one_line_error(capsys, code, message)


def test_a_folder_that_is_no_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, main(["ppl", str(tmp_path / "empty")]), "folder without config.json")


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_weights(checkpoint, tmp_path, capsys, damage):
    folder = _edit_plan(checkpoint, tmp_path, lambda c: None)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1000] if damage == "truncated" else b"")
    one_line_error(capsys, main(["ppl", str(folder), "--max-windows", "1"]), "cannot load")


@pytest.mark.parametrize("flag, value, message", [
    ("--seq-len", "0", "argument --seq-len: must be > 0, got 0"),
    ("--calib-samples", "0", "argument --calib-samples: must be > 0"),
    ("--batch-size", "0", "argument --batch-size: must be > 0"),
    ("--batch-size", "two", "argument --batch-size: expected int, got 'two'"),
    ("--seed", "-1", "argument --seed: must be >= 0"),
    ("--ratio", "1.5", "argument --ratio: must be in [0, 1), got 1.5"),
    ("--ratio", "nan", "argument --ratio: must be a finite number in [0, 1), got nan"),
    ("--similarity-tokens", "0", "argument --similarity-tokens: must be > 0"),
    ("--ridge-factor", "-1", "argument --ridge-factor: must be >= 0, got -1.0"),
    ("--ridge-factor", "nan", "argument --ridge-factor: must be a finite number >= 0"),
    ("--max-group-size", "0", "argument --max-group-size: must be > 0, got 0"),
    ("--holdout-fraction", "1", "argument --holdout-fraction: must be in [0, 1)"),
    ("--num-blocks", "0", "argument --num-blocks: must be > 0"),
])
def test_numbers_are_checked_before_anything_loads(tmp_path, capsys, flag, value, message):
    argv = ["compress", "/no/such/model", "--method", "flattengpt", "--out", str(tmp_path / "out"), flag, value]
    if flag != "--ratio":
        argv += ["--ratio", "0.2"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_library_configs_name_the_field():
    with pytest.raises(ValueError, match="max_group_size must be > 0, got 0"):
        flatten_hf.FlattenGPTConfig(ratio=0.2, max_group_size=0)
    with pytest.raises(ValueError, match="ridge_factor must be a finite number >= 0, got nan"):
        flatten_hf.FlattenGPTConfig(ratio=0.2, ridge_factor=float("nan"))
    with pytest.raises(ValueError, match="calibration num_samples must be > 0"):
        flatten_hf.CalibrationConfig(num_samples=0)
    with pytest.raises(ValueError, match="similarity_metric must be one of cosine, l2"):
        flatten_hf.FlattenGPTConfig(ratio=0.2, similarity_metric="dot")


def test_fixed_groups_past_the_models_depth(checkpoint, tmp_path, capsys):
    code = main(["compress", str(checkpoint), "--method", "flattengpt", "--num-layers", "1", "--fixed-groups", "3-4",
                 "--out", str(tmp_path / "out"), "--calib-samples", "2", "--seq-len", "16"])
    one_line_error(capsys, code, "--fixed-groups names layer 4, but the model has layers 0-3")
    assert not (tmp_path / "out").exists()


def test_seq_len_beyond_the_models_positions(checkpoint, tmp_path, capsys):
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(tmp_path / "out"),
                 "--calib-samples", "2", "--seq-len", "4096"])
    one_line_error(capsys, code, "--seq-len 4096 exceeds the model's max_position_embeddings 256")


def test_perplexity_windows_beyond_the_models_positions(checkpoint, capsys):
    code = main(["ppl", str(checkpoint), "--seq-len", "512", "--max-windows", "1"])
    one_line_error(capsys, code, "--seq-len 512 exceeds the model's max_position_embeddings 256")


@pytest.mark.parametrize("content, message", [("{", "is not JSON"), ('{"settings": {}}', "has no 'models' list")])
def test_report_from_a_file_that_is_no_eval_json(tmp_path, capsys, content, message):
    (tmp_path / "x.json").write_text(content)
    one_line_error(capsys, main(["report", "--eval", str(tmp_path / "x.json"), "--out", str(tmp_path / "r")]), message)


def test_ratio_that_removes_nothing_or_everything(checkpoint, tmp_path, capsys):
    code = main(["compress", str(checkpoint), "--num-layers", "4", "--out", str(tmp_path / "out"), *CALIB])
    one_line_error(capsys, code, "Cannot remove 4 of 4 decoder layers")
    code = main(["compress", str(checkpoint), "--ratio", "0.05", "--out", str(tmp_path / "out"), *CALIB])
    one_line_error(capsys, code, "rounds to 0 layers")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu(checkpoint, tmp_path, capsys):
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(tmp_path / "out"), "--device", "cuda"])
    one_line_error(capsys, code, "--device cuda", "use --device cpu")


def test_a_device_torch_does_not_know(checkpoint, capsys):
    one_line_error(capsys, main(["ppl", str(checkpoint), "--device", "gpu0"]), "is not a torch device")


def test_wikitext2_offline(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(tmp_path / "out"),
                 "--calib-source", "wikitext2", *CALIB])
    one_line_error(capsys, code, "wikitext2")
    assert not (tmp_path / "out").exists()


def test_a_calibration_source_with_an_empty_part(checkpoint, tmp_path, capsys):
    code = main(["compress", str(checkpoint), "--num-layers", "1", "--out", str(tmp_path / "out"),
                 "--calib-source", "wikipedia+", *CALIB])
    one_line_error(capsys, code, "names an empty part")


# --- degenerate weights and statistics ------------------------------------------------------------------------------

def test_nan_weights_are_refused_by_compress_and_flagged_on_load(checkpoint, tmp_path, capsys, caplog):
    model, tokenizer = load_model(str(checkpoint))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    tokenizer.save_pretrained(tmp_path / "nan")
    code = main(["compress", str(tmp_path / "nan"), "--num-layers", "1", "--out", str(tmp_path / "out"), *CALIB])
    one_line_error(capsys, code, "NaN or infinite weights (model.layers.1.mlp.down_proj.weight)")
    assert not (tmp_path / "out").exists()
    load_model(str(tmp_path / "nan"))
    assert "NaN or infinite weights" in caplog.text  # what eval / ppl users see when they load it


@pytest.mark.parametrize("method", ["shortgpt", "flattengpt", "replaceme", "come"])
def test_a_model_whose_layers_see_only_zeros_compresses(method):
    """Zero embeddings: every layer's input (and, for LLaMA, output) is zero; no NaN, no Cholesky error."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
    ids = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    out = flatten_hf.compress(model, method, calibration_ids=ids, num_layers=1)
    assert out.config.num_hidden_layers == 3
    assert all(torch.isfinite(p).all() for p in out.parameters())


def test_a_dead_layer_is_the_least_influential():
    """ShortGPT: a block whose input and output are both zero changes nothing, so its BI is 0, not 1."""
    from flatten_hf.similarity import block_influence

    zero, x = torch.zeros(1, 3, 8), torch.randn(1, 3, 8)
    assert block_influence([zero], [zero]) == 0.0
    assert block_influence([x], [x]) == pytest.approx(0.0, abs=1e-6)
    assert block_influence([x], [-x]) == pytest.approx(2.0)


@pytest.mark.parametrize("method", ["flattengpt", "replaceme"])
def test_same_seed_same_bytes(checkpoint, tmp_path, method):
    for name in ("a", "b"):
        assert main(["compress", str(checkpoint), "--method", method, "--num-layers", "1", "--out",
                     str(tmp_path / name), *CALIB]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_recover_without_peft_names_the_extra_before_loading(compressed, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "peft", None)  # peft not installed
    assert main(["recover", str(compressed), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'flatten-hf[recover]'" in err and "--train full" in err and len(err.splitlines()) == 1
