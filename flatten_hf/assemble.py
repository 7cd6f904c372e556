"""Build a compressed model from a merge plan and the new layers' weights: in memory (`assemble`) or
straight into checkpoint shards, one layer at a time (`write_checkpoint`).

The plan alone decides the architecture: the number of layers, each layer's widths, the layer types
(sliding windows), and whether a stock class can represent the result (every layer at the dense
widths, and nothing per head that a stock layer shares, see `ModelAdapter.stock_can_hold`) or the
per-layer `Flattened*ForCausalLM` classes are needed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .adapters import adapter_for, head_dim_of, is_flattened, layer_sizes
from .calibration import layer_type_of
from .modeling.configuration_flatten import PER_LAYER_FIELDS
from .ops.folding import fold_norms
from .ops.layer_weights import LayerState, concat, per_head_rows, select, shared_per_head
from .plan import MergePlan, SourceSlice
from .shard_writer import ShardWriter
from .streaming import SpilledLayerStates, new_layer_states, peak_rss_bytes

_NOT_INHERITED = ("model_type", "architectures", "auto_map", "transformers_version", "flatten", *PER_LAYER_FIELDS)


def layer_state(model: PreTrainedModel, layer_idx: int) -> LayerState:
    """A detached copy of one decoder layer's parameters, keyed relative to the layer."""
    return {k: v.detach().clone() for k, v in model.model.layers[layer_idx].state_dict().items()}


def whole_layer(config, layer_idx: int) -> SourceSlice:
    """The plan entry that keeps all of an original layer."""
    return SourceSlice.whole(layer_idx, *layer_sizes(config, layer_idx))


def layer_from_sources(model: PreTrainedModel, sources: list[SourceSlice]) -> LayerState:
    """A new layer's weights as the plan describes them: select each source's heads and channels and
    place them side by side (norms folded when several layers share the new layer)."""
    head_dim, roles = head_dim_of(model.config), adapter_for(model.config).roles
    states = [layer_state(model, s.layer) for s in sources]
    if len(sources) > 1:
        states = [fold_norms(s, roles) for s in states]
    parts = [select(st, roles, s.q_heads, s.kv_heads, s.mlp_channels, head_dim) for st, s in zip(states, sources)]
    return parts[0] if len(parts) == 1 else concat(parts, roles)


def compressed_config(base_config, plan: MergePlan, stock_if_uniform: bool = True,
                      recorded: MergePlan | None = None):
    """The config of the compressed model: the base config with the new depth, widths and plan.

    `plan` is over `base_config`'s layers; `recorded`, the plan written into the config, defaults to
    it (it differs when `base_config` is itself compressed: then it is `plan` composed with the
    earlier one, over the original layers, see `plan.compose`).
    """
    adapter = adapter_for(base_config)
    fields = {k: v for k, v in base_config.to_dict().items() if k not in _NOT_INHERITED}
    fields["num_hidden_layers"] = len(plan.layers)
    fields["head_dim"] = head_dim_of(base_config)
    if fields.get("layer_types"):
        # A new layer attends like the first original layer it came from (Qwen2/Qwen3 sliding windows).
        fields["layer_types"] = [layer_type_of(base_config, g[0]) for g in plan.groups]
        if "max_window_layers" in fields:
            fields["max_window_layers"] = sum(g[0] < base_config.max_window_layers for g in plan.groups)
    fields["flatten"] = (recorded or plan).to_dict()
    sizes = plan.per_layer_sizes()
    dense = {"num_attention_heads_per_layer": base_config.num_attention_heads,
             "num_key_value_heads_per_layer": base_config.num_key_value_heads,
             "intermediate_size_per_layer": base_config.intermediate_size}
    uniform = all(v == dense[k] for k, values in sizes.items() for v in values)
    if uniform and stock_if_uniform and adapter.stock_can_hold(plan):
        return adapter.stock_config_class(**fields)
    return adapter.flatten_config_class(**fields, **sizes)


def assemble(base_model: PreTrainedModel, plan: MergePlan, layer_states: list[LayerState],
             stock_if_uniform: bool = True, recorded: MergePlan | None = None) -> PreTrainedModel:
    """Instantiate the compressed model and load the new layers plus the base model's embeddings,
    final norm and LM head into it (`recorded`: the plan to store, see `compressed_config`)."""
    if len(layer_states) != len(plan.layers):
        raise ValueError(f"Got {len(layer_states)} layer states for a plan with {len(plan.layers)} layers.")
    config = compressed_config(base_model.config, plan, stock_if_uniform, recorded)
    adapter, flattened = adapter_for(config), is_flattened(config)
    model_class = adapter.flatten_model_class if flattened else adapter.stock_model_class
    # Per-head weights (Qwen3's q/k norms): a row per head in Flattened layers, one shared in stock ones.
    layout = per_head_rows if flattened else shared_per_head
    config._attn_implementation = base_model.config._attn_implementation
    dtype = base_model.dtype
    model = model_class(config).to(dtype)
    state = {k: v for k, v in base_model.state_dict().items() if not k.startswith("model.layers.")}
    for i, layer in enumerate(layer_states):
        state.update({f"model.layers.{i}.{k}": v.to(dtype) for k, v in layout(layer, adapter.roles).items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"Compressed weights do not fit the plan's architecture: missing {missing}, "
                           f"unexpected {unexpected}.")
    model.tie_weights()
    model.generation_config = copy.deepcopy(base_model.generation_config)
    return model.to(base_model.device).eval()


@torch.no_grad()
def write_checkpoint(folder: Path, base_model: PreTrainedModel, config, layer_states: Iterable[LayerState],
                     dtype: torch.dtype, max_shard_size: str | int = "5GB") -> None:
    """Write the compressed model that `config` describes into `folder` without building it: its
    config, generation config and (for the Flattened classes) modeling code as `save_pretrained`
    writes them, then the base model's embeddings, the new layers one at a time and the final norm and
    LM head, into safetensors shards (`ShardWriter`). The tensors are those `assemble` would hold."""
    adapter, flattened = adapter_for(config), is_flattened(config)
    model_class = adapter.flatten_model_class if flattened else adapter.stock_model_class
    layout = per_head_rows if flattened else shared_per_head
    config._attn_implementation = base_model.config._attn_implementation
    with torch.device("meta"):
        skeleton = model_class(config).to(dtype)
    skeleton.generation_config = copy.deepcopy(base_model.generation_config)
    skeleton.save_pretrained(folder, state_dict={})  # config.json, generation_config.json, code and auto_map
    expected = set(skeleton.state_dict())
    outside = {k: v for k, v in base_model.state_dict().items() if not k.startswith("model.layers.")}
    if config.tie_word_embeddings:
        outside.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    writer, written = ShardWriter(folder, max_shard_size), set()

    def add(name: str, tensor: torch.Tensor) -> None:
        writer.add(name, tensor.to(dtype))
        written.add(name)

    for name in [k for k in outside if k.startswith("model.embed_tokens.")]:
        add(name, outside.pop(name))
    bar = tqdm(layer_states, desc="writing layers", unit="layer")
    for i, state in enumerate(bar):
        for name, tensor in layout(state, adapter.roles).items():
            add(f"model.layers.{i}.{name}", tensor)
        writer.boundary()
        bar.set_postfix(peak_rss=f"{peak_rss_bytes() / 2**30:.2f}GiB")
    for name, tensor in outside.items():
        add(name, tensor)
    if written != expected:
        raise RuntimeError(f"Compressed weights do not fit the plan's architecture: missing {sorted(expected - written)}, "
                           f"unexpected {sorted(written - expected)}.")
    writer.close()


@torch.no_grad()
def plan_weights(model: PreTrainedModel, plan: MergePlan) -> list[LayerState] | SpilledLayerStates:
    """Weights of every new layer of a pure selection plan (no compensation)."""
    states = new_layer_states(model)
    for sources in plan.layers:
        states.append(layer_from_sources(model, sources))
    return states
