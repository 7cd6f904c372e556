"""The command line: documentation-like help, early and clear errors."""

from __future__ import annotations

import pytest

from flatten_hf.cli import main

from .tiny import tiny_model


def test_help_documents_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for command in ("assets", "compress", "ppl", "info", "examples:"):
        assert command in text


def test_compress_refuses_a_non_empty_output_before_any_work(tmp_path, capsys):
    tiny_model("llama").save_pretrained(tmp_path / "model")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "existing.txt").write_text("keep me")
    code = main(["compress", str(tmp_path / "model"), "--ratio", "0.2", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "existing.txt").read_text() == "keep me"


def test_info_explains_a_checkpoint_without_plan(tmp_path, capsys):
    tiny_model("llama").save_pretrained(tmp_path)
    assert main(["info", str(tmp_path)]) == 1
    assert "has no merge plan" in capsys.readouterr().err


def test_method_options_are_refused_for_other_methods(tmp_path, capsys):
    code = main(["compress", "--method", "shortgpt", "--ratio", "0.2", "--width-policy", "global", "--out",
                 str(tmp_path / "out")])
    assert code == 2
    assert "--width-policy (--method flattengpt) do not apply to --method shortgpt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_recover_refuses_a_model_without_plan_before_any_work(tmp_path, capsys):
    tiny_model("llama").save_pretrained(tmp_path / "plain")
    code = main(["recover", str(tmp_path / "plain"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "has no merge plan" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_come_options_are_refused_for_other_methods(tmp_path, capsys):
    code = main(["compress", "--method", "flattengpt", "--ratio", "0.2", "--norms", "average", "--out",
                 str(tmp_path / "out")])
    assert code == 2
    assert "--norms (--method come) do not apply to --method flattengpt" in capsys.readouterr().err
