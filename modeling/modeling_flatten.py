# Copyright 2026 The flatten-hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch flattened LLaMA, Mistral, Qwen2 and Qwen3 models: stock decoder layers, each with its own widths.

This file travels with every non-uniform checkpoint written by flatten-hf; it imports only `torch`,
`transformers` and its sibling `configuration_flatten.py`.

The stock decoder layers read every size from the config at construction time and infer head counts
from tensor shapes at run time. So a per-layer model needs no new attention or MLP code: it rebuilds
`self.layers` with each layer constructed from a per-layer view of the config. Everything else
(rotary embeddings, masks, caches, generation, attention backends, the loss) is inherited. The one
exception is Qwen3's per-head query/key norm, which gets one weight row per head (see
`FlattenedQwen3DecoderLayer`).
"""

from __future__ import annotations

from torch import nn
from transformers import (
    LlamaForCausalLM,
    LlamaModel,
    MistralForCausalLM,
    MistralModel,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen3ForCausalLM,
    Qwen3Model,
)
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.mistral.modeling_mistral import MistralDecoderLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RMSNorm

from .configuration_flatten import FlattenLlamaConfig, FlattenMistralConfig, FlattenQwen2Config, FlattenQwen3Config


def _build_flattened_layers(config, decoder_layer_class: type[nn.Module]) -> nn.ModuleList:
    """Construct one stock decoder layer per layer, sized by that layer's view of the config."""
    layers = nn.ModuleList(
        [decoder_layer_class(config.layer_config(i), i) for i in range(config.num_hidden_layers)]
    )
    for layer in layers:
        # The view snapshots `_attn_implementation`; forward reads it from `self_attn.config`, so point
        # that back to the live config or `set_attn_implementation` would not reach these layers.
        layer.self_attn.config = config
    return layers


class _FlattenedModelMixin:
    """Shared by the base models: swap the dense layers for per-layer-sized ones."""

    decoder_layer_class: type[nn.Module]

    def __init__(self, config) -> None:
        super().__init__(config)
        self.layers = _build_flattened_layers(config, self.decoder_layer_class)
        self.post_init()


class _FlattenedCausalLMMixin:
    """Shared by the causal-LM heads: use the flattened base model and per-layer static-cache shapes."""

    base_model_class: type[nn.Module]

    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.post_init()

    def _get_static_cache_init_shape(self):
        # transformers' default reads one global key/value head count; ours differs per layer.
        if hasattr(self, "hf_device_map") and len(set(self.hf_device_map.values())) > 1:
            return None
        return list(self.config.num_key_value_heads_per_layer), self.config.head_dim


class FlattenedLlamaModel(_FlattenedModelMixin, LlamaModel):
    config_class = FlattenLlamaConfig
    decoder_layer_class = LlamaDecoderLayer


class FlattenedLlamaForCausalLM(_FlattenedCausalLMMixin, LlamaForCausalLM):
    r"""A LLaMA causal LM whose decoder layers each have their own head and MLP widths.

    ```python
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_pretrained("path/to/flattened", trust_remote_code=True)
    ```"""

    config_class = FlattenLlamaConfig
    base_model_class = FlattenedLlamaModel


class FlattenedQwen2Model(_FlattenedModelMixin, Qwen2Model):
    config_class = FlattenQwen2Config
    decoder_layer_class = Qwen2DecoderLayer


class FlattenedQwen2ForCausalLM(_FlattenedCausalLMMixin, Qwen2ForCausalLM):
    r"""A Qwen2 causal LM whose decoder layers each have their own head and MLP widths."""

    config_class = FlattenQwen2Config
    base_model_class = FlattenedQwen2Model


class FlattenedMistralModel(_FlattenedModelMixin, MistralModel):
    config_class = FlattenMistralConfig
    decoder_layer_class = MistralDecoderLayer


class FlattenedMistralForCausalLM(_FlattenedCausalLMMixin, MistralForCausalLM):
    r"""A Mistral causal LM whose decoder layers each have their own head and MLP widths."""

    config_class = FlattenMistralConfig
    base_model_class = FlattenedMistralModel


class FlattenedQwen3DecoderLayer(Qwen3DecoderLayer):
    r"""A Qwen3 decoder layer whose query and key RMSNorms hold one weight row per head.

    Qwen3 normalises every query and key head with one weight vector shared by the layer's heads. The
    heads of a flattened layer come from several original layers, each with its own vector, and the
    norm sits between the projection and the rotary embedding, so it cannot be folded into a weight.
    A `[heads, head_dim]` weight broadcasts over the `[..., heads, head_dim]` states that the stock
    attention normalises, so nothing else changes.
    """

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        attn = self.self_attn
        attn.q_norm = Qwen3RMSNorm((config.num_attention_heads, attn.head_dim), eps=config.rms_norm_eps)
        attn.k_norm = Qwen3RMSNorm((config.num_key_value_heads, attn.head_dim), eps=config.rms_norm_eps)


class FlattenedQwen3Model(_FlattenedModelMixin, Qwen3Model):
    config_class = FlattenQwen3Config
    decoder_layer_class = FlattenedQwen3DecoderLayer


class FlattenedQwen3ForCausalLM(_FlattenedCausalLMMixin, Qwen3ForCausalLM):
    r"""A Qwen3 causal LM whose decoder layers each have their own head and MLP widths and per-head q/k norms."""

    config_class = FlattenQwen3Config
    base_model_class = FlattenedQwen3Model


__all__ = [
    "FlattenedLlamaModel",
    "FlattenedLlamaForCausalLM",
    "FlattenedMistralModel",
    "FlattenedMistralForCausalLM",
    "FlattenedQwen2Model",
    "FlattenedQwen2ForCausalLM",
    "FlattenedQwen3DecoderLayer",
    "FlattenedQwen3Model",
    "FlattenedQwen3ForCausalLM",
]
