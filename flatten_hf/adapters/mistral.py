"""Mistral (`MistralForCausalLM`): LLaMA's layout with one sliding attention window for every layer."""

from transformers import MistralForCausalLM
from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

from ..modeling import FlattenedMistralForCausalLM
from .base import ModelAdapter, register_adapter

MISTRAL = register_adapter(ModelAdapter(
    display_name="Mistral", stock_model_class=MistralForCausalLM, decoder_layer_class=MistralDecoderLayer,
    flatten_model_class=FlattenedMistralForCausalLM,
))
