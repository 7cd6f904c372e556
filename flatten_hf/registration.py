"""Register the flattened config and model classes with transformers' Auto classes.

Called on `import flatten_hf`, so that with the plugin installed `AutoModelForCausalLM.from_pretrained`
loads flattened checkpoints without `trust_remote_code` (a locally registered class wins over the
checkpoint's `auto_map`).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .adapters import registered_adapters


def register_auto_classes() -> None:
    """Idempotently register every adapter's Flattened classes with AutoConfig, AutoModel and
    AutoModelForCausalLM.

    Also mark the classes for `register_for_auto_class`, so that any `save_pretrained` of a flattened
    model (not only flatten-hf's own) copies the modeling files and writes `auto_map`.
    """
    for adapter in registered_adapters():
        config_class, lm_class = adapter.flatten_config_class, adapter.flatten_model_class
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, adapter.flatten_base_model_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, lm_class, exist_ok=True)
        config_class.register_for_auto_class()
        lm_class.register_for_auto_class("AutoModelForCausalLM")
