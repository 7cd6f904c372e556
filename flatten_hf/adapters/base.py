"""What flatten-hf needs to know about one decoder-only architecture, held by one `ModelAdapter`.

Methods, `assemble`, the card and the benchmarks never name a parameter or a model class: they ask
the adapter of the model's config (`adapter_for`). An adapter owns its architecture's stock and
Flattened classes, the roles of its decoder layer's parameters (`LayerRoles`: what is indexed by
head or channel, what can be folded, which biases add up), and whether a result that keeps the
dense widths can still be a stock checkpoint. Parameter and FLOP counts are read off a decoder layer
built on the meta device, so they are right for every architecture without a formula of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel

from ..ops.layer_weights import LayerRoles, LayerState, gated_decoder_roles, per_head_rows
from ..plan import MergePlan


@dataclass(frozen=True)
class ModelAdapter:
    """One architecture: its classes and the roles of its decoder layer's parameters.

    Args:
        display_name: how cards and logs spell the architecture (e.g. "LLaMA").
        stock_model_class, decoder_layer_class: the transformers causal LM and its decoder layer.
        flatten_model_class: the per-layer causal LM of `flatten_hf.modeling`; its config, base model
            and decoder layer classes are read from it.
        roles: the roles of the decoder layer's parameters and sublayers.
    """

    display_name: str
    stock_model_class: type[PreTrainedModel]
    decoder_layer_class: type[nn.Module]
    flatten_model_class: type[PreTrainedModel]
    roles: LayerRoles = field(default_factory=gated_decoder_roles)

    @property
    def model_type(self) -> str:
        """The stock config's `model_type` (e.g. "llama")."""
        return self.stock_config_class.model_type

    @property
    def stock_config_class(self) -> type:
        return self.stock_model_class.config_class

    @property
    def flatten_config_class(self) -> type:
        return self.flatten_model_class.config_class

    @property
    def flatten_base_model_class(self) -> type[PreTrainedModel]:
        return self.flatten_model_class.base_model_class

    @property
    def flattened_layer_class(self) -> type[nn.Module]:
        """The Flattened model's decoder layer (the stock one, or Qwen3's with per-head q/k norm rows)."""
        return self.flatten_base_model_class.decoder_layer_class

    def layers_stock_cannot_hold(self, plan: MergePlan) -> list[int]:
        """The new layers of `plan` that no stock layer can hold even at the dense widths: none, unless
        the architecture has per-head weights that a stock layer shares across its heads (Qwen3's q/k
        norms) and the layer draws heads from more than one original layer."""
        if not self.roles.per_head:
            return []
        return [i for i, sources in enumerate(plan.layers) if sum(bool(s.q_heads) for s in sources) > 1]

    def stock_can_hold(self, plan: MergePlan) -> bool:
        return not self.layers_stock_cannot_hold(plan)


_ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Make an architecture known to flatten-hf, under its stock and its Flattened `model_type`.

    Called once by each adapter module; re-registering the same model type replaces the entry.
    """
    _ADAPTERS[adapter.model_type] = adapter
    _ADAPTERS[adapter.flatten_config_class.model_type] = adapter
    return adapter


def registered_adapters() -> list[ModelAdapter]:
    """Every registered architecture, once each, in registration order."""
    return list({id(a): a for a in _ADAPTERS.values()}.values())


def get_adapter(model_type: str) -> ModelAdapter:
    """The adapter of a stock or Flattened `model_type`, or a `ValueError` listing the supported ones."""
    if model_type not in _ADAPTERS:
        supported = ", ".join(a.model_type for a in registered_adapters())
        raise ValueError(f"model_type {model_type!r} is not supported; flatten-hf compresses these decoder-only "
                         f"architectures: {supported} (and their flatten_* forms).")
    return _ADAPTERS[model_type]


def adapter_for(config) -> ModelAdapter:
    """The adapter of a (stock or flattened) config."""
    return get_adapter(getattr(config, "model_type", None))


def is_flattened(config) -> bool:
    return hasattr(config, "num_attention_heads_per_layer")


def layer_sizes(config, layer_idx: int) -> tuple[int, int, int]:
    """(query heads, key/value heads, MLP channels) of one decoder layer of a stock or flattened config."""
    if is_flattened(config):
        return (config.num_attention_heads_per_layer[layer_idx], config.num_key_value_heads_per_layer[layer_idx],
                config.intermediate_size_per_layer[layer_idx])
    return config.num_attention_heads, config.num_key_value_heads, config.intermediate_size


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def new_decoder_layer(config, layer_idx: int, num_heads: int, num_kv_heads: int, intermediate_size: int,
                      flattened: bool | None = None) -> nn.Module:
    """A decoder layer of the given widths, built from a per-layer view of `config`: the Flattened
    model's layer class when `flattened` (default: when `config` is a Flattened one), else the stock one."""
    adapter = adapter_for(config)
    flattened = is_flattened(config) if flattened is None else flattened
    view = copy.copy(config)
    view.head_dim = head_dim_of(config)
    view.num_attention_heads, view.num_key_value_heads, view.intermediate_size = num_heads, num_kv_heads, intermediate_size
    layer = (adapter.flattened_layer_class if flattened else adapter.decoder_layer_class)(view, layer_idx)
    layer.self_attn.config = config
    return layer


def loaded_decoder_layer(config, layer_idx: int, state: LayerState, num_heads: int, num_kv_heads: int,
                         intermediate_size: int, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """A candidate layer that a method can run on its calibration activations: the Flattened layer
    class of the given widths (which holds any state, heads from one layer or several) with `state`
    loaded, on `device` in `dtype`, in eval mode. It holds `state`'s own tensors where their device
    and dtype already fit: callers replace a state's entries, never write into them."""
    with torch.device("meta"):  # no random init, and the layer shares `state`'s tensors instead of copying them
        layer = new_decoder_layer(config, layer_idx, num_heads, num_kv_heads, intermediate_size, flattened=True)
    layer.load_state_dict(per_head_rows(state, adapter_for(config).roles), assign=True)
    return layer.to(device, dtype).eval()


def _meta_count(config, num_heads: int, num_kv_heads: int, intermediate_size: int, flattened: bool | None,
                count: Callable[[nn.Module], int]) -> int:
    """`count` of a decoder layer of the given widths built on the meta device.

    Every count is affine in the three widths, so a layer with a zero width (a block pruned to no
    heads, which the stock classes cannot build) is counted as 2 P(w + e) - P(w + 2e) on the
    Flattened layer class.
    """
    def at(q: int, kv: int, mlp: int) -> int:
        with torch.device("meta"):
            return count(new_decoder_layer(config, 0, q, kv, mlp, flattened))

    if num_heads and num_kv_heads and intermediate_size:
        return at(num_heads, num_kv_heads, intermediate_size)
    flattened = True  # only a Flattened layer can have a zero width (and its per-head weights vanish with it)
    n_rep = config.num_attention_heads // config.num_key_value_heads
    step = (0 if num_heads else n_rep, 0 if num_kv_heads else 1, 0 if intermediate_size else 1)
    widths = (num_heads, num_kv_heads, intermediate_size)
    return 2 * at(*(w + s for w, s in zip(widths, step))) - at(*(w + 2 * s for w, s in zip(widths, step)))


def layer_parameters(config, num_heads: int, num_kv_heads: int, intermediate_size: int,
                     flattened: bool | None = None) -> int:
    """Parameters of one decoder layer of the given widths (projections, biases, norms), counted on a
    layer built on the meta device, so every architecture's biases and norms are included."""
    return _meta_count(config, num_heads, num_kv_heads, intermediate_size, flattened,
                       lambda layer: sum(p.numel() for p in layer.parameters()))


def linear_weights(config, num_heads: int, num_kv_heads: int, intermediate_size: int) -> int:
    """Weights of the linear projections of one decoder layer (two FLOPs each per token)."""
    return _meta_count(config, num_heads, num_kv_heads, intermediate_size, None,
                       lambda layer: sum(m.weight.numel() for m in layer.modules() if isinstance(m, nn.Linear)))
