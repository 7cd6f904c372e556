"""Data-free calibration: token sequences sampled from the model being compressed.

Calibrating on one corpus fits the least-squares refits to that corpus: on SmolLM2-135M, FlattenGPT
fitted to Wikipedia passages wins on Wikipedia perplexity and loses to plain layer removal on every
other domain (issue 18). Text sampled from the model itself follows the model's own distribution
over everything it was trained on, needs no data set, and works for any model; a mixture of such
samples with a corpus keeps part of the corpus' in-domain advantage.

Sampling is plain ancestral sampling (temperature 1, no top-k/top-p truncation, so the samples are
draws from the model's distribution), starting from the tokenizer's BOS token when it has one. The
end-of-sequence token is suppressed until the sequence is full, so every sample has `seq_len` tokens.
Seeded without touching the global RNG state (`torch.random.fork_rng`).
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

SELF_SOURCE = "self"


def _start_token(model: PreTrainedModel, tokenizer) -> int:
    """The first token of every sample: BOS if the model has one, else the tokenizer's EOS (a document
    boundary, which is what a BOS-less model sees before a new document)."""
    for candidate in (getattr(tokenizer, "bos_token_id", None), model.config.bos_token_id,
                      getattr(tokenizer, "eos_token_id", None), model.config.eos_token_id):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    raise ValueError("Cannot sample calibration text from a model whose tokenizer has neither a BOS nor an EOS "
                     "token; use a text --calib-source instead of 'self'.")


@torch.no_grad()
def sample_ids(model: PreTrainedModel, tokenizer, num_samples: int, seq_len: int, seed: int = 0,
               batch_size: int = 64) -> torch.Tensor:
    """`[num_samples, seq_len]` token ids sampled from `model` (see the module docstring).

    Decoding is bound by reading the weights once per step, so a large batch costs little more per step
    than a small one. The samples depend on the seed and on the batch size (the order in which the
    random numbers are drawn).
    """
    if num_samples < 1 or seq_len < 2:
        raise ValueError(f"Sampled calibration needs at least 1 sample of 2 tokens, got {num_samples} x {seq_len}.")
    start = _start_token(model, tokenizer)
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id
    batches = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for first in tqdm(range(0, num_samples, batch_size), desc="sampling calibration text", unit="batch"):
            n = min(batch_size, num_samples - first)
            prompt = torch.full((n, 1), start, dtype=torch.long, device=device)
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=seq_len - 1, min_new_tokens=seq_len - 1,
                                 pad_token_id=eos[0] if isinstance(eos, list) else eos)
            batches.append(out[:, :seq_len].cpu())
    ids = torch.cat(batches)
    logger.info("sampled %d calibration sequences of %d tokens from the model", *ids.shape)
    return ids
