"""Tiny random-weight models of every supported architecture, for exactness tests."""

from __future__ import annotations

import torch

from flatten_hf.adapters import get_adapter

ARCHS = ("llama", "qwen2", "mistral", "qwen3")


def tiny_config(arch: str, **overrides):
    """4 layers, GQA (4 query heads on 2 key/value heads), untied head; Qwen2 and Qwen3 with their last two
    layers sliding-window ones, Mistral with a sliding window on every layer."""
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    common.update(overrides)
    if arch in ("qwen2", "qwen3"):
        common.setdefault("use_sliding_window", True)
        common.setdefault("max_window_layers", 2)
    if arch != "llama":
        common.setdefault("sliding_window", 6)
    return get_adapter(arch).stock_config_class(**common)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (norms and biases too) non-trivial values so that exactness tests can fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.rand(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    return model.eval()


def tiny_model(arch: str, seed: int = 0, attn: str = "sdpa", **overrides):
    config = tiny_config(arch, **overrides)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return randomize(get_adapter(arch).stock_model_class(config), seed)
