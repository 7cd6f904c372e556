"""Qwen2 (`Qwen2ForCausalLM`; Qwen2.5): biases on q/k/v, sliding-window layer types."""

from transformers import Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from ..modeling import FlattenedQwen2ForCausalLM
from .base import ModelAdapter, register_adapter

QWEN2 = register_adapter(ModelAdapter(
    display_name="Qwen2", stock_model_class=Qwen2ForCausalLM, decoder_layer_class=Qwen2DecoderLayer,
    flatten_model_class=FlattenedQwen2ForCausalLM,
))
