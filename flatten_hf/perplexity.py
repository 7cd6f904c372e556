"""Perplexity with the WikiText-2 protocol: one token stream, non-overlapping windows, remainder dropped."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .checks import check_positions


def windows(token_ids: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Cut a 1-D token stream into `[n, seq_len]` non-overlapping windows, dropping the remainder."""
    n = token_ids.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"The evaluation text has {token_ids.numel()} tokens, fewer than one window of {seq_len}.")
    return token_ids[: n * seq_len].view(n, seq_len)


@torch.no_grad()
def perplexity(model: PreTrainedModel, token_ids: torch.Tensor, seq_len: int = 512, batch_size: int = 4,
               max_windows: int | None = None) -> float:
    """exp of the mean next-token negative log-likelihood over every predicted token of every window.

    Each window is scored independently (no context carried across windows), as GPTQ, SLEB, SliceGPT
    and CoMe do; the first token of a window is context only.
    """
    check_positions(seq_len, model.config)
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for batch in tqdm(windows(token_ids, seq_len, max_windows).split(batch_size), desc="perplexity", unit="batch"):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    return math.exp(total_nll / total_tokens)
