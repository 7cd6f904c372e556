"""Qwen3 (`Qwen3ForCausalLM`): per-head RMSNorm on queries and keys (`q_norm`, `k_norm`).

Those norms sit between the projections and the rotary embedding, so they cannot be folded. They are
per-head roles: a stock layer shares one `[head_dim]` weight across its heads, a Flattened one holds a
row per head (`FlattenedQwen3DecoderLayer`), which is what a layer with heads from several original
layers needs. Results whose layers each take their heads from one original layer (ShortGPT,
ReplaceMe) stay stock `Qwen3ForCausalLM` checkpoints.
"""

from transformers import Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from ..modeling import FlattenedQwen3ForCausalLM
from ..ops.layer_weights import gated_decoder_roles
from .base import ModelAdapter, register_adapter

QWEN3 = register_adapter(ModelAdapter(
    display_name="Qwen3", stock_model_class=Qwen3ForCausalLM, decoder_layer_class=Qwen3DecoderLayer,
    flatten_model_class=FlattenedQwen3ForCausalLM,
    roles=gated_decoder_roles(per_head={"self_attn.q_norm.weight": "q", "self_attn.k_norm.weight": "kv"}),
))
