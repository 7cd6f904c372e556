"""Self-contained config and modeling files copied next to every non-uniform flatten-hf checkpoint.

Installed as `flatten_hf.modeling`; the files themselves import only `torch` and `transformers`.
"""

from .configuration_flatten import (
    FlattenConfig,
    FlattenLlamaConfig,
    FlattenMistralConfig,
    FlattenQwen2Config,
    FlattenQwen3Config,
)
from .modeling_flatten import (
    FlattenedLlamaForCausalLM,
    FlattenedLlamaModel,
    FlattenedMistralForCausalLM,
    FlattenedMistralModel,
    FlattenedQwen2ForCausalLM,
    FlattenedQwen2Model,
    FlattenedQwen3DecoderLayer,
    FlattenedQwen3ForCausalLM,
    FlattenedQwen3Model,
)

__all__ = [
    "FlattenConfig",
    "FlattenLlamaConfig",
    "FlattenMistralConfig",
    "FlattenQwen2Config",
    "FlattenQwen3Config",
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
