"""Architecture adapters: one module per supported architecture, each registering one `ModelAdapter`.

Adding an architecture is one module here (and its line below), its Flattened classes in
`modeling/`, and its tests.
"""

from . import llama, mistral, qwen2, qwen3  # noqa: F401  (each registers its adapter)
from .base import (
    ModelAdapter,
    adapter_for,
    get_adapter,
    head_dim_of,
    is_flattened,
    layer_parameters,
    layer_sizes,
    linear_weights,
    loaded_decoder_layer,
    new_decoder_layer,
    register_adapter,
    registered_adapters,
)

__all__ = [
    "ModelAdapter",
    "adapter_for",
    "get_adapter",
    "head_dim_of",
    "is_flattened",
    "layer_parameters",
    "layer_sizes",
    "linear_weights",
    "loaded_decoder_layer",
    "new_decoder_layer",
    "register_adapter",
    "registered_adapters",
]
