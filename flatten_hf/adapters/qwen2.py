"""Qwen2 (`Qwen2ForCausalLM`; Qwen2.5): biases on q/k/v, sliding-window layer types."""

from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from ..modeling import FlattenedQwen2ForCausalLM, FlattenedQwen2Model, FlattenQwen2Config
from .base import ModelAdapter, register_adapter

QWEN2 = register_adapter(ModelAdapter(
    model_type="qwen2", display_name="Qwen2",
    stock_config_class=Qwen2Config, stock_model_class=Qwen2ForCausalLM, decoder_layer_class=Qwen2DecoderLayer,
    flatten_config_class=FlattenQwen2Config, flatten_base_model_class=FlattenedQwen2Model,
    flatten_model_class=FlattenedQwen2ForCausalLM,
))
