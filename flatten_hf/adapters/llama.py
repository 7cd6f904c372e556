"""LLaMA (`LlamaForCausalLM`; SmolLM2, Llama 2/3): the reference layout, optional attention/MLP biases."""

from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from ..modeling import FlattenedLlamaForCausalLM
from .base import ModelAdapter, register_adapter

LLAMA = register_adapter(ModelAdapter(
    display_name="LLaMA", stock_model_class=LlamaForCausalLM, decoder_layer_class=LlamaDecoderLayer,
    flatten_model_class=FlattenedLlamaForCausalLM,
))
