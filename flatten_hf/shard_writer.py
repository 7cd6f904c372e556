"""Write a checkpoint's tensors into safetensors shards as they are produced, with bounded memory.

`save_pretrained` needs the whole state dict in memory; a streamed compression hands over one layer
at a time. `ShardWriter` buffers tensors and writes a shard when the next tensor would push it past
`max_shard_size`, or at a layer boundary once `flush_bytes` are buffered, so it never holds much
more than one layer. It names the shards as transformers does (`model.safetensors` when there is
one, else `model-00001-of-0000N.safetensors` plus `model.safetensors.index.json`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers.utils.hub import convert_file_size_to_int

from .streaming import SAFETENSORS_INDEX, SAFETENSORS_SINGLE

FLUSH_BYTES = 512 * 2**20  # the most a layer boundary lets the buffer hold before writing it out


class ShardWriter:
    """Collect `add(name, tensor)` calls into shards under `folder`; `close()` names them and writes the index."""

    def __init__(self, folder: str | Path, max_shard_size: str | int = "5GB", flush_bytes: int = FLUSH_BYTES) -> None:
        self.folder = Path(folder)
        self.max_bytes = convert_file_size_to_int(max_shard_size) if isinstance(max_shard_size, str) else max_shard_size
        self.flush_bytes = min(flush_bytes, self.max_bytes)
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffered = 0
        self._shards: list[list[str]] = []  # tensor names per written shard, in order
        self.total_size = 0

    def _part(self, k: int) -> Path:
        return self.folder / f".shard-{k:05d}.safetensors"

    def _flush(self) -> None:
        if not self._buffer:
            return
        save_file(self._buffer, self._part(len(self._shards)), metadata={"format": "pt"})
        self._shards.append(list(self._buffer))
        self._buffer, self._buffered = {}, 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffered + size > self.max_bytes:
            self._flush()
        self._buffer[name] = tensor.detach().contiguous()
        self._buffered += size
        self.total_size += size

    def boundary(self) -> None:
        """A place where a shard may end (after a decoder layer): write the buffer once it is large."""
        if self._buffered >= self.flush_bytes:
            self._flush()

    def close(self) -> list[Path]:
        """Write what is left, give the shards their final names and write the index (when sharded)."""
        self._flush()
        n = len(self._shards)
        if n == 1:
            final = [self.folder / SAFETENSORS_SINGLE]
        else:
            final = [self.folder / f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
        for k, path in enumerate(final):
            os.replace(self._part(k), path)
        if n > 1:
            weight_map = {name: path.name for names, path in zip(self._shards, final) for name in names}
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return final
