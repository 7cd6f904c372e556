"""LLaMA (`LlamaForCausalLM`; SmolLM2, Llama 2/3): the reference layout, optional attention/MLP biases."""

from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from ..modeling import FlattenedLlamaForCausalLM, FlattenedLlamaModel, FlattenLlamaConfig
from .base import ModelAdapter, register_adapter

LLAMA = register_adapter(ModelAdapter(
    model_type="llama", display_name="LLaMA",
    stock_config_class=LlamaConfig, stock_model_class=LlamaForCausalLM, decoder_layer_class=LlamaDecoderLayer,
    flatten_config_class=FlattenLlamaConfig, flatten_base_model_class=FlattenedLlamaModel,
    flatten_model_class=FlattenedLlamaForCausalLM,
))
