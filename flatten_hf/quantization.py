"""Weight-only quantization of (compressed) models with optimum-quanto, in memory or saved.

Depth compression and weight quantization are said to be orthogonal (ShortGPT's paper); this is
where the two meet: `--quantize int8|int4` on `eval`, `ppl` and `bench` quantizes the loaded model
in memory (quanto's `quantize` + `freeze`), and `flatten-hf quantize` saves it with quanto's
`QuantizedModelForCausalLM` (weights plus `quanto_qmap.json`; a Flattened model's modeling files
are copied by its `save_pretrained`), which `load_quantized` reads back.

The LM head is left in the model's dtype by default (`keep_lm_head=True`): it is the one projection
whose every output is a logit, and with tied embeddings (SmolLM2) quantizing it also unties it from
the embeddings; see the README's Deploy table for what it costs to quantize it too.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import PreTrainedModel

WEIGHT_TYPES = ("int8", "int4")
QMAP_FILE = "quanto_qmap.json"


def require_quanto() -> None:
    """Fail with the extra to install, before any model is loaded."""
    try:
        import optimum.quanto  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError("quantization needs optimum-quanto: pip install 'flatten-hf[quantize]'.",
                                  name="optimum") from None


def _qtype(weights: str):
    from optimum import quanto

    if weights not in WEIGHT_TYPES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_TYPES)}, got {weights!r}.")
    return {"int8": quanto.qint8, "int4": quanto.qint4}[weights]


def _exclude(keep_lm_head: bool) -> list[str] | None:
    return ["lm_head"] if keep_lm_head else None


def quantize_weights(model: PreTrainedModel, weights: str = "int8", keep_lm_head: bool = True,
                     include: list[str] | None = None) -> PreTrainedModel:
    """Quantize the weights of `model`'s linear layers in place (int8 per output channel, int4 in groups
    of 128) and freeze them; activations stay in the model's dtype. Returns `model`.

    `include` (fnmatch patterns of module names, e.g. `model.layers.3.*` or `*.down_proj`) quantizes only
    those modules: how a quantization loss is traced to the layers and projections that cause it."""
    require_quanto()
    from optimum.quanto import freeze, quantize

    quantize(model, weights=_qtype(weights), include=include, exclude=_exclude(keep_lm_head))
    freeze(model)
    return model


def save_quantized(model: PreTrainedModel, out_dir: str | os.PathLike, weights: str = "int8",
                   keep_lm_head: bool = True) -> Path:
    """Quantize `model` and save it with quanto's `QuantizedModelForCausalLM` into `out_dir`."""
    require_quanto()
    from optimum.quanto import QuantizedModelForCausalLM

    qmodel = QuantizedModelForCausalLM.quantize(model, weights=_qtype(weights), exclude=_exclude(keep_lm_head))
    qmodel.save_pretrained(str(out_dir))
    return Path(out_dir)


def is_quantized_checkpoint(folder: str | os.PathLike) -> bool:
    return (Path(folder) / QMAP_FILE).is_file()


def load_quantized(folder: str | os.PathLike) -> PreTrainedModel:
    """A checkpoint written by `save_quantized`, as the transformers model inside quanto's wrapper."""
    require_quanto()
    from optimum.quanto import QuantizedModelForCausalLM

    return QuantizedModelForCausalLM.from_pretrained(str(folder))._wrapped.eval()
