"""Text sources: deterministic, disjoint calibration/evaluation splits; calibration windows."""

from __future__ import annotations

import pytest
import torch

from flatten_hf.data import calibration_windows, load_text_source


def test_local_text_file_splits_are_disjoint_and_deterministic(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"document number {i}" for i in range(40)))
    a, b = load_text_source(str(path)), load_text_source(str(path))
    assert a == b
    assert len(a.evaluation) == 10 and len(a.calibration) == 30
    assert not set(a.calibration) & set(a.evaluation)


def test_wikitext2_folder_uses_train_for_calibration_and_test_for_evaluation(tmp_path):
    (tmp_path / "wiki.train.raw").write_text(" = A = \n train text \n")
    (tmp_path / "wiki.test.raw").write_text(" = B = \n test text \n")
    splits = load_text_source(f"wikitext2:{tmp_path}")
    assert splits.calibration == [" = A = \n train text \n"] and splits.evaluation == [" = B = \n test text \n"]
    with pytest.raises(FileNotFoundError, match="must contain wiki.train.raw and wiki.test.raw"):
        load_text_source(f"wikitext2:{tmp_path / 'missing'}")


def test_unknown_source_is_explained():
    with pytest.raises(ValueError, match="Unknown text source 'nowhere'"):
        load_text_source("nowhere")


def test_calibration_windows_are_seeded_slices():
    ids = torch.arange(1000)
    a = calibration_windows(ids, 8, 16, seed=3)
    assert a.shape == (8, 16) and torch.equal(a, calibration_windows(ids, 8, 16, seed=3))
    assert all(torch.equal(row, torch.arange(row[0], row[0] + 16)) for row in a)
    assert not torch.equal(a, calibration_windows(ids, 8, 16, seed=4))
