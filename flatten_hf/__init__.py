"""flatten-hf: depth compression (FlattenGPT, ShortGPT, ReplaceMe, CoMe) for Hugging Face causal LMs
(LLaMA, Mistral, Qwen2, Qwen3; more through `flatten_hf.adapters`).

Importing the package registers the flattened config and model classes with transformers' Auto
classes, so compressed checkpoints load with `AutoModelForCausalLM.from_pretrained` directly.
"""

from .card import render_card, write_card
from .checkpoint import load_model, save_compressed
from .compression import CalibrationConfig, compress, compress_checkpoint
from .evaluation import EvalResult, evaluate
from .hub import push_to_hub
from .methods.come import CoMeConfig
from .methods.flattengpt import FlattenGPTConfig
from .methods.replaceme import ReplaceMeConfig
from .methods.shortgpt import ShortGPTConfig
from .modeling import *  # noqa: F403  (the config and model classes)
from .modeling import __all__ as _modeling_all
from .perplexity import perplexity
from .plan import MergePlan, SourceSlice
from .recovery import RecoveryConfig, recover
from .registration import register_auto_classes

register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "CalibrationConfig",
    "CoMeConfig",
    "EvalResult",
    "FlattenGPTConfig",
    "MergePlan",
    "RecoveryConfig",
    "ReplaceMeConfig",
    "ShortGPTConfig",
    "SourceSlice",
    "compress",
    "compress_checkpoint",
    "evaluate",
    "load_model",
    "perplexity",
    "push_to_hub",
    "recover",
    "render_card",
    "save_compressed",
    "write_card",
    *_modeling_all,
]
