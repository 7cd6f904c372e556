"""Architecture adapters: one module per supported architecture, each registering one `ModelAdapter`.

Every module of this package is imported here, so adding an architecture is one module here, its
Flattened config and model classes in `modeling/` (they travel with per-layer checkpoints, so they
cannot live in the adapter), and its tests.
"""

import importlib
import pkgutil

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

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

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
