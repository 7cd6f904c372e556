"""Layer-wise calibration runner: push calibration data through a model one decoder layer at a time.

The SparseGPT/SliceGPT sequential pattern: capture the inputs of the first decoder layer once, then
for each layer run it on the stored activations, let the caller record statistics, and pass the
outputs on. Methods can therefore replace a layer (or a group of layers) before moving on, and
every statistic of layer l is measured on the already-compressed prefix, so errors do not compound
silently. Memory stays bounded by one layer on the compute device plus the activations.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def capture(module: nn.Module, what: str):
    """Collect the input (`what="input"`) or output of `module` on each forward call."""
    seen: list[torch.Tensor] = []
    if what == "input":
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()


class _StopForward(Exception):
    """Raised by the capture hook once it has what it needs."""


def input_of(module: nn.Module, call: Callable[[], object]) -> torch.Tensor:
    """The input `module` receives while `call()` runs; the run stops there, so nothing after it is computed."""
    seen: list[torch.Tensor] = []

    def stop(m, args):
        seen.append(args[0])
        raise _StopForward

    handle = module.register_forward_pre_hook(stop)
    try:
        call()
    except _StopForward:
        pass
    finally:
        handle.remove()
    return seen[0]


def layer_type_of(config, layer_idx: int) -> str:
    """The attention kind of an original layer ("full_attention" unless the config says otherwise)."""
    layer_types = getattr(config, "layer_types", None)
    return layer_types[layer_idx] if layer_types else "full_attention"


def _to(obj, device: torch.device):
    """`obj` (a tensor, or tensors in tuples and dicts) on `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


class _Recorder(nn.Module):
    """Stands in for decoder layer `idx` while the runner captures its inputs: records, computes nothing."""

    def __init__(self, idx: int, attention_type: str, record: Callable[[int, torch.Tensor, dict], None]) -> None:
        super().__init__()
        self.idx, self.attention_type, self.record = idx, attention_type, record

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.record(self.idx, hidden_states, kwargs)
        return hidden_states


class LayerwiseRunner:
    """Holds the hidden states entering the current layer for every calibration batch.

    Args:
        model: a causal LM of a supported architecture (`model.model.layers`); its layers may live on the CPU.
        input_ids: `[N, L]` calibration token ids.
        batch_size: sequences per forward call.
        device: where layers are run and activations kept; defaults to the device of the embeddings.
    """

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, batch_size: int = 8,
                 device: torch.device | str | None = None) -> None:
        self.model = model
        self.config = model.config
        base = model.model
        self.device = torch.device(device) if device is not None else base.embed_tokens.weight.device
        self.batches = list(input_ids.split(batch_size))
        self.hidden: list[torch.Tensor] = []
        self.layer_kwargs: list[dict[str, dict]] = []  # per batch: layer type -> forward kwargs
        self._capture(base)

    @torch.no_grad()
    def _capture(self, base: nn.Module) -> None:
        """Record each batch's embeddings and the forward kwargs (position embeddings, masks) per layer type.

        The base model runs with stand-ins for its decoder layers that record what they are called
        with and pass the hidden states through: no decoder layer is computed (or, for a streamed
        model, read from disk), since none of the recorded kwargs depends on a layer's output.
        """
        wanted: dict[str, int] = {}
        for i in range(len(base.layers)):
            wanted.setdefault(layer_type_of(self.config, i), i)
        last = max(wanted.values())
        embed_device = base.embed_tokens.weight.device
        layers = base.layers
        for ids in self.batches:
            captured: dict[str, dict] = {}

            def record(idx: int, hidden: torch.Tensor, kwargs: dict) -> None:
                if idx == 0:
                    self.hidden.append(_to(hidden.detach(), self.device))
                for kind, first in wanted.items():
                    if first == idx:
                        captured[kind] = _to(kwargs, self.device)
                if idx == last:
                    raise _StopForward

            base.layers = nn.ModuleList(_Recorder(idx, layer_type_of(self.config, idx), record)
                                        for idx in range(last + 1))
            try:
                base(input_ids=ids.to(embed_device), use_cache=False)
            except _StopForward:
                pass
            finally:
                base.layers = layers
            self.layer_kwargs.append(captured)

    @property
    def num_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    @torch.no_grad()
    def run(self, layer: nn.Module, layer_type: str = "full_attention",
            inputs: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Outputs of `layer` on every batch (of `inputs`, default the current hidden states)."""
        outputs = []
        for h, kwargs in zip(inputs if inputs is not None else self.hidden, self.layer_kwargs):
            out = layer(h, **kwargs[layer_type])
            outputs.append(out[0] if isinstance(out, tuple) else out)
        return outputs

    def advance(self, outputs: list[torch.Tensor]) -> None:
        """Make `outputs` the inputs of the next layer."""
        self.hidden = outputs

    def view(self, batches: slice) -> "LayerwiseRunner":
        """A runner over the batches `batches` of this one (their ids, inputs and kwargs), sharing the
        tensors (read-only) and advancing independently of this runner."""
        sub = copy.copy(self)
        sub.batches, sub.hidden, sub.layer_kwargs = self.batches[batches], self.hidden[batches], self.layer_kwargs[batches]
        return sub

    def head(self, max_tokens: int) -> "LayerwiseRunner":
        """A runner over the first batches holding at least `max_tokens` tokens (cheap statistics)."""
        n, tokens = 0, 0
        while n < len(self.hidden) and tokens < max_tokens:
            tokens += self.hidden[n].shape[0] * self.hidden[n].shape[1]
            n += 1
        return self.view(slice(0, n))

    def split(self, fraction: float) -> tuple["LayerwiseRunner", "LayerwiseRunner | None"]:
        """Runners over the first batches and over the last `fraction` of them (None when that is no
        whole batch, or would leave none to fit on): fit on one, judge on data the fit never saw."""
        held = int(len(self.hidden) * fraction)
        if held == 0 or held == len(self.hidden):
            return self, None
        cut = len(self.hidden) - held
        return self.view(slice(0, cut)), self.view(slice(cut, None))

    def with_hidden(self, hidden: list[torch.Tensor]) -> "LayerwiseRunner":
        """A runner over the same batches whose current inputs are `hidden`."""
        other = copy.copy(self)
        other.hidden = hidden
        return other

    def iter_batches(self) -> Iterator[tuple[torch.Tensor, dict[str, dict]]]:
        yield from zip(self.hidden, self.layer_kwargs)


