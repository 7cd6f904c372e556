"""Self-contained config and modeling files copied next to every non-uniform flatten-hf checkpoint.

Installed as `flatten_hf.modeling`; the files themselves import only `torch` and `transformers`.
"""

from .configuration_flatten import *  # noqa: F403
from .configuration_flatten import __all__ as _config_all
from .modeling_flatten import *  # noqa: F403
from .modeling_flatten import __all__ as _modeling_all

__all__ = [name for name in [*_config_all, *_modeling_all] if name[0].isupper()]
