"""Run an exported GGUF with llama-cpp-python, on the same token ids as the transformers model.

Used to check an export (logits, greedy tokens, perplexity against the source checkpoint) and to
measure llama.cpp's speed in `benchmarks/gguf_export.py`. Token ids come from the checkpoint's
transformers tokenizer, so both runtimes score exactly the same tokens.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .gguf_export import require_llama_cpp_python
from .perplexity import windows


def load_gguf(path: str | os.PathLike, n_ctx: int = 512, n_threads: int | None = None, f32_cache: bool = False,
              all_logits: bool = True):
    """A `llama_cpp.Llama` that keeps the logits of every position (needed for perplexity; `all_logits=False`
    computes only the last one, as a server does, for speed measurements).

    llama.cpp stores its KV cache in f16 by default, which alone moves logits by about 1e-3 of their
    scale; `f32_cache` keeps it in f32, for exactness checks of a conversion.
    """
    require_llama_cpp_python("running a GGUF")
    import llama_cpp

    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    return llama_cpp.Llama(model_path=str(Path(path)), n_ctx=n_ctx, n_batch=n_ctx, logits_all=all_logits, verbose=False,
                           n_threads=n_threads or os.cpu_count(), **cache)


def gguf_logits(llm, token_ids: list[int]) -> torch.Tensor:
    """`[len(token_ids), vocab]` float32 logits of one sequence, evaluated from an empty cache."""
    llm.reset()
    llm.eval(list(token_ids))
    return torch.from_numpy(llm.scores[: len(token_ids)].copy())


def gguf_perplexity(llm, token_ids: torch.Tensor, seq_len: int = 512, max_windows: int | None = None) -> float:
    """The same protocol as `flatten_hf.perplexity.perplexity`: independent non-overlapping windows."""
    total_nll, total_tokens = 0.0, 0
    for window in windows(token_ids, seq_len, max_windows):
        logits = gguf_logits(llm, window.tolist())[:-1]
        total_nll += F.cross_entropy(logits, window[1:], reduction="sum").item()
        total_tokens += seq_len - 1
    return math.exp(total_nll / total_tokens)


def gguf_greedy(llm, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
    """Greedy continuation of `prompt_ids` (argmax of every step's logits), new tokens only; like
    transformers' `generate(do_sample=False)` it stops after `eos_token_id`."""
    llm.reset()
    out: list[int] = []
    llm.eval(list(prompt_ids))
    for _ in range(max_new_tokens):
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        out.append(token)
        if token == eos_token_id:
            break
        llm.eval([token])
    return out
