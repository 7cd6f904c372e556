"""Compressed real SmolLM2 checkpoints in the tools people already use (slow).

From `flatten-hf compress` to a rendered card to a push (to a local fake Hub), then the pushed
folder loaded and generating where flatten-hf is not installed, on transformers 5 and 4.57; plus
`pipeline`, `generate`, PEFT LoRA, accelerate's `device_map="auto"`, bfloat16, eager and sdpa.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import flatten_hf
from flatten_hf.cli import main
from flatten_hf.data import calibration_ids

from .fake_hub import TOKEN, serve_fake_hub
from .test_modeling import load_in_clean_process

pytestmark = pytest.mark.slow
CALIB = ["--calib-samples", "16", "--seq-len", "256"]
# The bare transformers-4.57 environment made by scripts/setup.sh (no flatten-hf in it).
PYTHON_V4 = Path(__file__).resolve().parents[1] / ".venv-transformers4" / "bin" / "python"
CHECKPOINTS = {
    # ShortGPT at the dense widths: a stock LlamaForCausalLM checkpoint, no custom code.
    "shortgpt": ["--method", "shortgpt", "--num-layers", "6"],
    # FlattenGPT with globally allocated widths: per-layer shapes, saved with its modeling code.
    "flattengpt": ["--method", "flattengpt", "--num-layers", "6", "--width-policy", "global"],
    # Nothing removed, Flattened classes forced: must behave exactly as the base model.
    "reference": ["--method", "shortgpt", "--num-layers", "0", "--flattened-classes"],
}


@pytest.fixture(scope="module")
def checkpoints(smollm2, tmp_path_factory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("dropin")
    for name, args in CHECKPOINTS.items():
        assert main(["compress", *args, "--out", str(root / name), *CALIB]) == 0
    yield {name: root / name for name in CHECKPOINTS}
    shutil.rmtree(root)  # 1.4 GB of checkpoints: free the disk for the rest of the session


def greedy(model, tokenizer, prompt: str, new_tokens: int = 12) -> torch.Tensor:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    return model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)


@pytest.mark.parametrize("name", ["shortgpt", "flattengpt"])
def test_compress_card_push_and_load_without_flatten_hf_on_both_transformers_lines(checkpoints, name, tmp_path):
    folder = checkpoints[name]
    assert PYTHON_V4.exists(), "run `bash scripts/setup.sh` to create .venv-transformers4 (transformers 4.57)"
    model = AutoModelForCausalLM.from_pretrained(folder)
    custom = name == "flattengpt"
    assert type(model).__name__ == ("FlattenedLlamaForCausalLM" if custom else "LlamaForCausalLM")
    assert main(["card", str(folder), "--measure", "--eval-windows", "4"]) == 0
    card = (folder / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and metadata["license"] == "apache-2.0"
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["type"] == "perplexity"
    assert "**30 → 24 decoder layers**" in card

    repo_id = f"tester/smollm2-{name}"
    with serve_fake_hub(tmp_path / "hub") as hub:
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1")
        proc = subprocess.run([sys.executable, "-m", "flatten_hf.cli", "push", str(folder), repo_id],
                              env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(hub.commits) == 1
    pushed = hub.tree(repo_id)
    expected = {"model.safetensors", "config.json", "generation_config.json", "README.md", "eval_results.json",
                "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    if custom:
        expected |= {"configuration_flatten.py", "modeling_flatten.py"}
    assert {p.name for p in pushed.iterdir()} == expected

    tokenizer = AutoTokenizer.from_pretrained(pushed)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name a large city in France."}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    for python in (sys.executable, str(PYTHON_V4)):
        got = load_in_clean_process(pushed, ids, tmp_path, remote=custom, python=python, new_tokens=10)
        assert got["transformers"].startswith("5." if python == sys.executable else "4.57")
        torch.testing.assert_close(got["logits"], model(ids).logits, rtol=1e-4, atol=1e-4)
        assert torch.equal(got["generated"], want), got["transformers"]


@pytest.mark.parametrize("name", ["shortgpt", "flattengpt"])
def test_pipeline_keeps_the_chat_template(checkpoints, smollm2, name):
    _, base_tokenizer = smollm2
    generator = pipeline("text-generation", model=str(checkpoints[name]))
    assert generator.tokenizer.chat_template == base_tokenizer.chat_template
    # A prompt both 24-layer models answer: the l2-grouped FlattenGPT one (at this test's 16 x 256
    # calibration tokens) ends "What is the capital of France?" at once with <|im_end|>, an empty reply.
    messages = [{"role": "user", "content": "Write a haiku about rivers."}]
    reply = generator(messages, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    assert reply[:-1] == messages and reply[-1]["role"] == "assistant" and reply[-1]["content"].strip()
    # The pipeline's reply is exactly the greedy continuation of the chat-templated prompt.
    expected = greedy(generator.model, generator.tokenizer, messages[0]["content"])
    prompt_len = len(generator.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                             return_dict=True)["input_ids"])
    want = generator.tokenizer.decode(expected[0, prompt_len:], skip_special_tokens=True)
    assert reply[-1]["content"].strip() == want.strip()


def test_nothing_removed_generates_exactly_as_the_base_model(checkpoints, smollm2):
    base, tokenizer = smollm2
    reference = AutoModelForCausalLM.from_pretrained(checkpoints["reference"])
    assert type(reference) is flatten_hf.FlattenedLlamaForCausalLM
    for prompt in ("What is the capital of France?", "Write a haiku about rivers."):
        assert torch.equal(greedy(reference, tokenizer, prompt, 20), greedy(base, tokenizer, prompt, 20))


def test_peft_lora_trains_and_merges_on_per_layer_widths(checkpoints, smollm2, tmp_path):
    from peft import LoraConfig, get_peft_model

    _, tokenizer = smollm2
    model = AutoModelForCausalLM.from_pretrained(checkpoints["flattengpt"])
    widths = set(model.config.intermediate_size_per_layer) | set(model.config.num_key_value_heads_per_layer)
    assert len(widths) > 2, "the global width policy should give layers of different shapes"
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], lora_dropout=0.0))
    batch = calibration_ids(tokenizer, num_samples=4, seq_len=128, seed=7)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    peft_model.train()
    for _ in range(6):
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=batch[:1]).logits
        merged = peft_model.merge_and_unload()
        assert type(merged) is flatten_hf.FlattenedLlamaForCausalLM
        merged_logits = merged(input_ids=batch[:1]).logits
        # Merging W + BA into one matrix changes only float rounding (logits are O(10)).
        torch.testing.assert_close(merged_logits, adapted, rtol=1e-3, atol=1e-3)
        flatten_hf.save_compressed(merged, tmp_path / "merged", tokenizer)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        assert torch.equal(reloaded(input_ids=batch[:1]).logits, merged_logits)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["flatten"]["method"] == "flattengpt"


def test_device_map_auto_with_accelerate_offload(checkpoints, smollm2, tmp_path):
    """accelerate places whole decoder layers of different shapes, here half of them offloaded to disk."""
    _, tokenizer = smollm2
    folder = checkpoints["flattengpt"]
    ids = torch.tensor([tokenizer("The river flows through the old town and").input_ids])
    reference = AutoModelForCausalLM.from_pretrained(folder)
    want = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": "300MB"},
                                                 offload_folder=str(tmp_path / "offload"))
    placement = set(model.hf_device_map.values())
    assert placement == {"cpu", "disk"}, model.hf_device_map
    assert all(not key.startswith("model.layers.") or key.count(".") == 2 for key in model.hf_device_map)
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    assert torch.equal(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False), want)


def test_bfloat16_with_eager_and_sdpa_attention(checkpoints, smollm2):
    _, tokenizer = smollm2
    folder = checkpoints["flattengpt"]
    ids = torch.tensor([tokenizer("The river flows through the old town and past the").input_ids])
    fp32 = {attn: AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn)(ids).logits
            for attn in ("eager", "sdpa")}
    torch.testing.assert_close(fp32["eager"], fp32["sdpa"], rtol=1e-4, atol=1e-4)
    for attn in ("eager", "sdpa"):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation=attn)
        assert model.dtype == torch.bfloat16 and model.config._attn_implementation == attn
        assert all(layer.self_attn.config._attn_implementation == attn for layer in model.model.layers)
        # bfloat16 keeps the float32 model's predictions: the same top token at most positions.
        agree = (model(ids).logits.argmax(-1) == fp32[attn].argmax(-1)).float().mean().item()
        assert agree >= 0.8, (attn, agree)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
        assert out.shape == (1, ids.shape[1] + 8)
