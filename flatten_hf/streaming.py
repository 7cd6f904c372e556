"""Compress checkpoints larger than memory: decoder layers read from the safetensors shards on demand.

`load_streamed_model(folder)` builds the model skeleton on the meta device (no memory), loads only
the tensors outside the decoder layers (embeddings, final norm, LM head) and puts a `StreamedLayers`
where `model.model.layers` was. Indexing it reads that one layer from the shards (`safe_open`,
through the shard index) and builds it on the compute device; a small least-recently-used cache
keeps the last few layers resident and frees the others. Every method already reaches layers only
through `model.model.layers[i]` and the layer-wise runner, so the same code runs on either model,
bit for bit.

What a method produces goes to `new_layer_states(model)`: a plain list for a model in memory, and
for a streamed one a `SpilledLayerStates` that writes each finished layer to a scratch file and
reads it back once, in order, when the checkpoint is written (`flatten_hf.shard_writer`). Peak host
memory is therefore the embeddings plus a few layers plus the calibration activations, whatever
the depth.
"""

from __future__ import annotations

import json
import logging
import resource
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, GenerationConfig, PreTrainedModel

from .adapters import adapter_for, is_flattened, layer_sizes, new_decoder_layer
from .ops.layer_weights import LayerState

logger = logging.getLogger(__name__)

LAYER_PREFIX = "model.layers."
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"


class CheckpointReader:
    """The tensors of a safetensors checkpoint folder (one file or shards with their index), by name."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index, single = self.folder / SAFETENSORS_INDEX, self.folder / SAFETENSORS_SINGLE
        if index.is_file():
            self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif single.is_file():
            with safe_open(single, "pt") as f:
                self.weight_map = dict.fromkeys(f.keys(), SAFETENSORS_SINGLE)
        else:
            raise ValueError(f"{self.folder} has no safetensors weights ({SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX}), "
                             "so its layers cannot be streamed; load the model and pass it to compress() instead.")

    @staticmethod
    def has_safetensors(folder: str | Path) -> bool:
        return any((Path(folder) / name).is_file() for name in (SAFETENSORS_INDEX, SAFETENSORS_SINGLE))

    def names(self, prefix: str = "") -> list[str]:
        return [name for name in self.weight_map if name.startswith(prefix)]

    def read(self, names: list[str], dtype: torch.dtype, strip: str = "") -> dict[str, torch.Tensor]:
        """The named tensors in `dtype`, keyed without the prefix `strip`; each shard is opened once."""
        by_shard: dict[str, list[str]] = {}
        for name in names:
            by_shard.setdefault(self.weight_map[name], []).append(name)
        out = {}
        for shard, shard_names in by_shard.items():
            with safe_open(self.folder / shard, "pt") as f:
                for name in shard_names:
                    out[name[len(strip):]] = f.get_tensor(name).to(dtype)
        return out


def _check_finite(state: dict[str, torch.Tensor], where: str, prefix: str = "") -> None:
    """Refuse NaN/inf weights as `checks.check_finite` does, for tensors read straight from the shards."""
    bad = [prefix + name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ValueError(f"{where} has NaN or infinite weights ({bad[0]}{more}); it cannot be compressed. Check the "
                         "checkpoint (a failed download or a diverged training run).")


class StreamedLayers(nn.Module):
    """Stands in for `model.model.layers`: layer i is read from the checkpoint when indexed.

    At most `resident` layers stay cached (least recently used first out); a method that holds a
    layer (a FlattenGPT group's members) keeps it alive for as long as it needs it. The layers are
    not submodules, so the skeleton's `state_dict()` holds only the tensors outside the layers.
    """

    def __init__(self, reader: CheckpointReader, config, dtype: torch.dtype, device: torch.device | str,
                 resident: int = 2) -> None:
        super().__init__()
        self.reader, self.config, self.dtype, self.device = reader, config, dtype, torch.device(device)
        self.resident = resident
        self._cache: OrderedDict[int, nn.Module] = OrderedDict()
        self.reads = 0  # layers read from disk so far (the cache's misses)
        self.scratch: Path | None = None  # where finished layers are spilled (see `new_layer_states`)
        self.spill_dtype: torch.dtype | None = None
        self._spills = 0

    def spill_to(self, folder: Path, dtype: torch.dtype | None = None) -> None:
        """Spill the layers methods finish into `folder`, cast to `dtype` (the checkpoint's, so that
        a float32 run saved in bfloat16 writes half the scratch bytes; default: as computed)."""
        self.scratch, self.spill_dtype = folder, dtype

    def __len__(self) -> int:
        return self.config.num_hidden_layers

    def __iter__(self) -> Iterator[nn.Module]:
        return (self[i] for i in range(len(self)))

    def layer_state(self, idx: int) -> LayerState:
        """Layer `idx`'s tensors as the checkpoint stores them, keyed relative to the layer."""
        prefix = f"{LAYER_PREFIX}{idx}."
        state = self.reader.read(self.reader.names(prefix), self.dtype, strip=prefix)
        _check_finite(state, f"{self.reader.folder}", prefix)
        return state

    def __getitem__(self, idx: int) -> nn.Module:
        if not isinstance(idx, int):
            raise TypeError("StreamedLayers is indexed by one layer number; iterate it for all layers.")
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"layer {idx} of {len(self)}")
        if idx in self._cache:
            self._cache.move_to_end(idx)
            return self._cache[idx]
        with torch.device("meta"):
            layer = new_decoder_layer(self.config, idx, *layer_sizes(self.config, idx))
        layer.load_state_dict(self.layer_state(idx), assign=True)
        layer = layer.to(self.device).eval()
        self.reads += 1
        logger.debug("read layer %d (%d reads); peak resident memory %.2f GiB", idx, self.reads,
                     peak_rss_bytes() / 2**30)
        self._cache[idx] = layer
        while len(self._cache) > self.resident:
            self._cache.popitem(last=False)
        return layer


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def is_streamed(model: PreTrainedModel) -> bool:
    return isinstance(model.model.layers, StreamedLayers)


@torch.no_grad()
def load_streamed_model(folder: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                        resident: int = 2) -> PreTrainedModel:
    """A causal LM whose decoder layers stay on disk until a method reaches them (see the module docstring).

    The tensors outside the layers are loaded on the CPU in `dtype`; layers are built on `device`.
    """
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    adapter = adapter_for(config)
    model_class = adapter.flatten_model_class if is_flattened(config) else adapter.stock_model_class
    reader = CheckpointReader(folder)
    with torch.device("meta"):
        model = model_class(config)
    model.model.layers = StreamedLayers(reader, model.config, dtype, device, resident)
    outside = [name for name in reader.names() if not name.startswith(LAYER_PREFIX)]
    state = reader.read(outside, dtype)
    _check_finite(state, f"{folder}")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise ValueError(f"{folder} holds tensors its config does not describe (first: {unexpected[0]}).")
    # RoPE's inverse frequencies are computed, not stored: build them for real on the CPU.
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config)
    model.tie_weights()
    still_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise ValueError(f"{folder} lacks {still_meta[0]}; the checkpoint is incomplete.")
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval()


class SpilledLayerStates:
    """The finished layers of a streamed run, one scratch safetensors file each, read back in order.

    A list's `append`, `len` and one-by-one iteration, with nothing held in memory.
    """

    def __init__(self, folder: Path, dtype: torch.dtype | None = None) -> None:
        self.folder, self.dtype = folder, dtype
        folder.mkdir(parents=True, exist_ok=True)
        self._count = 0

    def append(self, state: LayerState) -> None:
        cast = {k: (v.to(self.dtype) if self.dtype and v.is_floating_point() else v).cpu().contiguous()
                for k, v in state.items()}  # layers computed on a GPU are spilled from host memory
        save_file(cast, self._file(self._count))
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def _file(self, idx: int) -> Path:
        return self.folder / f"layer-{idx:05d}.safetensors"

    def __getitem__(self, idx: int) -> LayerState:
        if not 0 <= idx < self._count:
            raise IndexError(idx)
        with safe_open(self._file(idx), "pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}

    def __iter__(self) -> Iterator[LayerState]:
        return (self[i] for i in range(self._count))

    def drop(self, indices: Iterable[int]) -> None:
        """Delete the layers at `indices` and renumber the rest in order, on disk, without reading them."""
        dropped = set(indices)
        kept = [i for i in range(self._count) if i not in dropped]
        for i in dropped:
            self._file(i).unlink()
        for new, old in enumerate(kept):  # ascending: slot `new` is free (dropped, or its file already moved)
            if new != old:
                self._file(old).rename(self._file(new))
        self._count = len(kept)


def drop_layer_states(states: list[LayerState] | SpilledLayerStates,
                      indices: Iterable[int]) -> list[LayerState] | SpilledLayerStates:
    """`states` without the layers at `indices` (a method that decides what to remove once all are built)."""
    if isinstance(states, SpilledLayerStates):
        states.drop(indices)
        return states
    dropped = set(indices)
    return [state for i, state in enumerate(states) if i not in dropped]


def new_layer_states(model: PreTrainedModel) -> list[LayerState] | SpilledLayerStates:
    """Where a method puts the layers it finishes: a list, or scratch files for a streamed model."""
    layers = model.model.layers
    if not isinstance(layers, StreamedLayers):
        return []
    if layers.scratch is None:
        raise RuntimeError("A streamed model needs a scratch folder for its finished layers (layers.spill_to); "
                           "compress it with flatten_hf.compress_checkpoint.")
    layers._spills += 1
    return SpilledLayerStates(layers.scratch / f"states-{layers._spills}", layers.spill_dtype)
