# Copyright 2026 The flatten-hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch flattened LLaMA and Qwen2 models: stock decoder layers, each built with its own widths.

This file travels with every non-uniform checkpoint written by flatten-hf; it imports only `torch`,
`transformers` and its sibling `configuration_flatten.py`.

The stock decoder layers read every size from the config at construction time and infer head counts
from tensor shapes at run time. So a per-layer model needs no new attention or MLP code: it rebuilds
`self.layers` with each layer constructed from a per-layer view of the config. Everything else
(rotary embeddings, masks, caches, generation, attention backends, the loss) is inherited.
"""

from __future__ import annotations

from torch import nn
from transformers import LlamaForCausalLM, LlamaModel, Qwen2ForCausalLM, Qwen2Model
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from .configuration_flatten import FlattenLlamaConfig, FlattenQwen2Config


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


__all__ = [
    "FlattenedLlamaModel",
    "FlattenedLlamaForCausalLM",
    "FlattenedQwen2Model",
    "FlattenedQwen2ForCausalLM",
]
