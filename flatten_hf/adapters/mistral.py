"""Mistral (`MistralForCausalLM`): LLaMA's layout with one sliding attention window for every layer."""

from transformers import MistralConfig, MistralForCausalLM
from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

from ..modeling import FlattenedMistralForCausalLM, FlattenedMistralModel, FlattenMistralConfig
from .base import ModelAdapter, register_adapter

MISTRAL = register_adapter(ModelAdapter(
    model_type="mistral", display_name="Mistral",
    stock_config_class=MistralConfig, stock_model_class=MistralForCausalLM, decoder_layer_class=MistralDecoderLayer,
    flatten_config_class=FlattenMistralConfig, flatten_base_model_class=FlattenedMistralModel,
    flatten_model_class=FlattenedMistralForCausalLM,
))
