"""The small differences between the supported architectures, in one table.

LLaMA and Qwen2 decoder layers have the same parameter layout; they differ in which projections
carry biases and in Qwen2's sliding-window layer types. Everything else in flatten-hf is one code
path parameterised by an `Architecture`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from .modeling import (
    FlattenedLlamaForCausalLM,
    FlattenedQwen2ForCausalLM,
    FlattenLlamaConfig,
    FlattenQwen2Config,
)


@dataclass(frozen=True)
class Architecture:
    base_model_type: str
    stock_config_class: type
    stock_model_class: type[PreTrainedModel]
    flatten_config_class: type
    flatten_model_class: type[PreTrainedModel]
    decoder_layer_class: type[nn.Module]


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", LlamaConfig, LlamaForCausalLM, FlattenLlamaConfig, FlattenedLlamaForCausalLM,
                          LlamaDecoderLayer),
    "qwen2": Architecture("qwen2", Qwen2Config, Qwen2ForCausalLM, FlattenQwen2Config, FlattenedQwen2ForCausalLM,
                          Qwen2DecoderLayer),
}
_MODEL_TYPE_TO_BASE = {"llama": "llama", "flatten_llama": "llama", "qwen2": "qwen2", "flatten_qwen2": "qwen2"}


def architecture_of(config) -> Architecture:
    """The architecture of a (stock or flattened) LLaMA/Qwen2 config, or a clear error for anything else."""
    base = _MODEL_TYPE_TO_BASE.get(getattr(config, "model_type", None))
    if base is None:
        raise ValueError(
            f"model_type {getattr(config, 'model_type', None)!r} is not supported; flatten-hf compresses "
            f"LLaMA- and Qwen2-family causal LMs (model_type one of {sorted(_MODEL_TYPE_TO_BASE)})."
        )
    return ARCHITECTURES[base]


def layer_sizes(config, layer_idx: int) -> tuple[int, int, int]:
    """(query heads, key/value heads, MLP channels) of one decoder layer of a stock or flattened config."""
    if hasattr(config, "num_attention_heads_per_layer"):
        return (config.num_attention_heads_per_layer[layer_idx], config.num_key_value_heads_per_layer[layer_idx],
                config.intermediate_size_per_layer[layer_idx])
    return config.num_attention_heads, config.num_key_value_heads, config.intermediate_size


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def new_decoder_layer(config, layer_idx: int, num_heads: int, num_kv_heads: int, intermediate_size: int) -> nn.Module:
    """A stock decoder layer of the given widths, built from a per-layer view of `config`.

    Used to materialise candidate layers (e.g. a wide flattened block) outside of a model.
    """
    view = copy.copy(config)
    view.head_dim = head_dim_of(config)
    view.num_attention_heads, view.num_key_value_heads, view.intermediate_size = num_heads, num_kv_heads, intermediate_size
    layer = architecture_of(config).decoder_layer_class(view, layer_idx)
    layer.self_attn.config = config
    return layer


def loaded_decoder_layer(config, layer_idx: int, state: dict, num_heads: int, num_kv_heads: int,
                         intermediate_size: int, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """`new_decoder_layer` with `state` loaded, on `device` in `dtype`, in eval mode: a candidate layer
    that a method can run on its calibration activations."""
    layer = new_decoder_layer(config, layer_idx, num_heads, num_kv_heads, intermediate_size)
    layer.load_state_dict(state)
    return layer.to(device, dtype).eval()
