"""Pushing a checkpoint to a local fake Hub: one commit, exactly the loadable files, clear errors."""

from __future__ import annotations

import hashlib

import pytest
import torch
from huggingface_hub import constants

import flatten_hf
from flatten_hf.hub import push_to_hub

from .fake_hub import TOKEN, serve_fake_hub
from .test_modeling import load_in_clean_process
from .tiny import tiny_model


@pytest.fixture(autouse=True)
def no_xet(monkeypatch):
    """The fake Hub speaks the LFS protocol, not Xet storage."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny Qwen2 with per-layer widths (custom code), saved in several safetensors shards."""
    model = tiny_model("qwen2")
    ids = torch.randint(3, 90, (4, 32), generator=torch.Generator().manual_seed(0))
    compressed = flatten_hf.compress(model, "flattengpt", calibration_ids=ids, num_layers=1, width_policy="global",
                                     base_model="Qwen/Qwen2.5-Coder-0.5B-Instruct", stock_if_uniform=False)
    out = tmp_path / "tiny-qwen2"
    flatten_hf.save_compressed(compressed, out, max_shard_size="40KB", card_writer=flatten_hf.write_card)
    return compressed, out


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_push_uploads_the_loadable_checkpoint_in_one_commit(checkpoint, tmp_path):
    model, folder = checkpoint
    (folder / "notes.txt").write_text("scratch file that must not be uploaded")
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) > 1
    with serve_fake_hub(tmp_path / "hub") as hub:
        info = push_to_hub(folder, "tester/tiny-qwen2", token=TOKEN, endpoint=hub.url)
    assert len(hub.commits) == 1 and info.commit_url.endswith(info.oid)
    tree = hub.tree("tester/tiny-qwen2")
    expected = {*shards, "model.safetensors.index.json", "config.json", "generation_config.json",
                "configuration_flatten.py", "modeling_flatten.py", "README.md"}
    assert set(hub.commits[0].files) == expected == {p.name for p in tree.iterdir()}
    for name in expected - {"README.md"}:
        assert sha(tree / name) == sha(folder / name), name
    # The card was re-rendered for the target repository on the way up; the local folder is untouched.
    assert 'from_pretrained("tester/tiny-qwen2", trust_remote_code=True)' in (tree / "README.md").read_text()
    assert "your-username/tiny-qwen2" in (folder / "README.md").read_text()
    # What arrived loads where flatten-hf is not importable, and computes the same logits.
    ids = torch.randint(3, 90, (2, 7))
    got = load_in_clean_process(tree, ids, tmp_path, remote=True)
    assert got["cls"].endswith("FlattenedQwen2ForCausalLM")
    torch.testing.assert_close(got["logits"], model(ids).logits)


def test_push_to_a_branch_and_as_a_pull_request(checkpoint, tmp_path):
    _, folder = checkpoint
    with serve_fake_hub(tmp_path / "hub") as hub:
        push_to_hub(folder, "tester/tiny", token=TOKEN, endpoint=hub.url, revision="v1", private=True)
        info = push_to_hub(folder, "tester/tiny", token=TOKEN, endpoint=hub.url, create_pr=True)
    assert hub.repos["tester/tiny"]["private"]
    assert [c.revision for c in hub.commits] == ["v1", "refs/pr/1"]
    assert info.pr_url.endswith("/tester/tiny/discussions/1")
    assert (hub.tree("tester/tiny", "v1") / "config.json").is_file()
    assert not any(hub.tree("tester/tiny", "main").iterdir())


def test_push_errors_are_clear_and_upload_nothing(checkpoint, tmp_path, monkeypatch):
    _, folder = checkpoint
    with serve_fake_hub(tmp_path / "hub") as hub:
        monkeypatch.setattr("flatten_hf.hub.get_token", lambda: None)
        with pytest.raises(ValueError, match="No Hugging Face token.*HF_TOKEN"):
            push_to_hub(folder, "tester/x", endpoint=hub.url)
        with pytest.raises(ValueError, match="rejected the token"):
            push_to_hub(folder, "tester/x", token="hf_wrong", endpoint=hub.url)
        (folder / "pytorch_model.bin").write_bytes(b"pickle")
        with pytest.raises(ValueError, match="pickle weights"):
            push_to_hub(folder, "tester/x", token=TOKEN, endpoint=hub.url)
        (folder / "pytorch_model.bin").unlink()
        (folder / "modeling_flatten.py").rename(tmp_path / "modeling_flatten.py")
        with pytest.raises(FileNotFoundError, match="auto_map needs modeling_flatten.py"):
            push_to_hub(folder, "tester/x", token=TOKEN, endpoint=hub.url)
        (tmp_path / "modeling_flatten.py").rename(folder / "modeling_flatten.py")
        assert hub.repos == {} and hub.commits == []
    # The server is gone now: a clear network error, naming the endpoint.
    with pytest.raises(RuntimeError, match=f"Cannot reach the Hub at {hub.url}"):
        push_to_hub(folder, "tester/x", token=TOKEN, endpoint=hub.url)


def test_push_refuses_offline_mode(checkpoint, monkeypatch):
    _, folder = checkpoint
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        push_to_hub(folder, "tester/x", token=TOKEN)


def test_stock_checkpoint_pushes_no_code(tmp_path):
    model = tiny_model("llama")
    ids = torch.randint(3, 90, (4, 32))
    compressed = flatten_hf.compress(model, "shortgpt", calibration_ids=ids, num_layers=1, base_model="local/base")
    flatten_hf.save_compressed(compressed, tmp_path / "short", card_writer=flatten_hf.write_card)
    with serve_fake_hub(tmp_path / "hub") as hub:
        push_to_hub(tmp_path / "short", "tester/short", token=TOKEN, endpoint=hub.url)
    files = set(hub.commits[0].files)
    assert files == {"model.safetensors", "config.json", "generation_config.json", "README.md"}
    got = load_in_clean_process(hub.tree("tester/short"), ids[:1, :5], tmp_path, remote=False)
    assert got["cls"].endswith("LlamaForCausalLM")
