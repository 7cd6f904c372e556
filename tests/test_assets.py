"""Offline assets: sha256 verification, clear errors, no half-written cache entries."""

from __future__ import annotations

import pytest

from flatten_hf import assets
from flatten_hf.assets import Asset, AssetError, Wheel

SIX = Wheel("six==1.16.0", "six-1.16.0-py2.py3-none-any.whl",
            "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254")


def test_wheel_is_downloaded_verified_and_cached(tmp_path):
    path = assets._download_wheel(SIX, tmp_path)
    assert assets.sha256_of(path) == SIX.sha256
    mtime = path.stat().st_mtime_ns
    assert assets._download_wheel(SIX, tmp_path).stat().st_mtime_ns == mtime  # cached, not fetched again


def test_hash_mismatch_is_refused(tmp_path):
    bad = Wheel(SIX.requirement, SIX.filename, "0" * 64)
    with pytest.raises(AssetError, match="sha256 mismatch for six-1.16.0"):
        assets._download_wheel(bad, tmp_path)
    assert not (tmp_path / SIX.filename).exists()


def test_unavailable_package_says_what_to_do(tmp_path):
    missing = Wheel("six==0.0.0.424242", "six-0.0.0.424242-py3-none-any.whl", "0" * 64)
    with pytest.raises(AssetError, match=r"Could not download six==0.0.0.424242 from PyPI \(are you offline\?\)"):
        assets._download_wheel(missing, tmp_path)


def test_failed_conversion_leaves_no_entry(tmp_path, monkeypatch):
    def broken_build(wheels, out):
        out.mkdir()
        (out / "half-written").write_text("x")
        raise RuntimeError("conversion failed")

    monkeypatch.setitem(assets.ASSETS, "broken", Asset("broken", "test", (), broken_build))
    with pytest.raises(RuntimeError, match="conversion failed"):
        assets.fetch(["broken"], home=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fetch_is_idempotent(tmp_path, monkeypatch):
    calls = []

    def build(wheels, out):
        calls.append(out)
        out.mkdir()

    monkeypatch.setitem(assets.ASSETS, "ok", Asset("ok", "test", (), build))
    first = assets.fetch(["ok"], home=tmp_path)
    second = assets.fetch(["ok"], home=tmp_path)
    assert first == second == {"ok": tmp_path / "ok"} and len(calls) == 1


def test_missing_asset_error_names_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="Run `flatten-hf assets fetch smollm2-135m`"):
        assets.require_asset("smollm2-135m", home=tmp_path)
