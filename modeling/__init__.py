"""Self-contained config and modeling files copied next to every non-uniform flatten-hf checkpoint.

Installed as `flatten_hf.modeling`; the files themselves import only `torch` and `transformers`.
"""

from .configuration_flatten import FlattenConfig, FlattenLlamaConfig, FlattenQwen2Config
from .modeling_flatten import (
    FlattenedLlamaForCausalLM,
    FlattenedLlamaModel,
    FlattenedQwen2ForCausalLM,
    FlattenedQwen2Model,
)

__all__ = [
    "FlattenConfig",
    "FlattenLlamaConfig",
    "FlattenQwen2Config",
    "FlattenedLlamaModel",
    "FlattenedLlamaForCausalLM",
    "FlattenedQwen2Model",
    "FlattenedQwen2ForCausalLM",
]
