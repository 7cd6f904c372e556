"""llama.cpp's converter, taught to read Flattened checkpoints as its `deci` architecture.

llama.cpp has one architecture whose layers differ in width: `deci` (NVIDIA's Nemotron/DeciLM
models), whose GGUF holds per-layer arrays of query heads, key/value heads and MLP widths. A
Flattened checkpoint is exactly that: LLaMA layers (Qwen2's with q/k/v biases) with their own head
counts and MLP widths. So this module registers one converter class for the Flattened architectures,
a subclass of the converter's own `DeciModel` that takes the per-layer sizes from `config.json`
instead of Deci's `block_configs`, and then runs the converter's command line unchanged: tokenizer,
tensor names, rotary permutation, output types and splitting all stay llama.cpp's.

It runs in a child process started by `flatten_hf.gguf_export`, with the llama.cpp source tree first
on `sys.path` (its `convert_hf_to_gguf.py` also puts the tree's own `gguf-py` there), so that the
converter's modules never mix with ours:

    python -m flatten_hf.gguf_deci LLAMA_CPP_DIR MODEL_DIR --outfile OUT.gguf --outtype f16
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

# Qwen3 is not among them: `deci` has no per-head q/k norms.
FLATTENED_ARCHITECTURES = ("FlattenedLlamaForCausalLM", "FlattenedQwen2ForCausalLM")


def per_layer_sizes(hparams: dict) -> tuple[list[int], list[int], list[int]]:
    """Query heads, key/value heads and MLP width of every layer; the dense value where a list is absent."""
    n = hparams["num_hidden_layers"]

    def sizes(field: str, dense: str) -> list[int]:
        values = hparams.get(field) or [hparams[dense]] * n
        if len(values) != n:
            raise ValueError(f"config.json: {field} has {len(values)} entries for {n} layers")
        return [int(v) for v in values]

    return (sizes("num_attention_heads_per_layer", "num_attention_heads"),
            sizes("num_key_value_heads_per_layer", "num_key_value_heads"),
            sizes("intermediate_size_per_layer", "intermediate_size"))


def register_flattened_converter() -> None:
    """Register the Flattened architectures with the converter imported from `sys.path`."""
    import conversion
    import gguf
    from conversion.base import ModelBase, TextModel
    from conversion.deci import DeciModel

    class FlattenedDeciModel(DeciModel):
        """A Flattened checkpoint as `deci`: per-layer head counts and MLP widths, LLaMA's tensors."""

        model_arch = gguf.MODEL_ARCH.DECI

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._num_heads, self._num_kv_heads, self._ffn_dims = per_layer_sizes(self.hparams)

        def set_vocab(self) -> None:
            # Every supported base model ships a tokenizer.json BPE vocabulary (no sentencepiece model),
            # which the converter writes as its `gpt2` tokenizer with the pre-tokenizer it detects.
            self._set_vocab_gpt2()

        def set_gguf_parameters(self) -> None:
            super().set_gguf_parameters()  # the dense (scalar) hyper-parameters, head_dim and vocabulary size
            keys = gguf.Keys
            for key in (keys.Attention.HEAD_COUNT, keys.Attention.HEAD_COUNT_KV, keys.LLM.FEED_FORWARD_LENGTH):
                self.gguf_writer.remove_key(key.format(arch=self.gguf_writer.arch))
            self.gguf_writer.add_head_count(self._num_heads)
            self.gguf_writer.add_head_count_kv(self._num_kv_heads)
            self.gguf_writer.add_feed_forward_length(self._ffn_dims)

        def modify_tensors(self, data_torch, name: str, bid: int | None) -> Iterable[tuple[str, object]]:
            # llama.cpp's rotary embedding pairs adjacent dimensions; transformers' pairs the two halves of
            # each head. The permutation is per head, so it needs this layer's own head counts.
            if bid is not None and name.endswith(("q_proj.weight", "q_proj.bias")):
                data_torch = DeciModel.permute(data_torch, self._num_heads[bid], None)
            elif bid is not None and name.endswith(("k_proj.weight", "k_proj.bias")):
                data_torch = DeciModel.permute(data_torch, self._num_kv_heads[bid], None)
            yield from TextModel.modify_tensors(self, data_torch, name, bid)

    ModelBase.register(*FLATTENED_ARCHITECTURES)(FlattenedDeciModel)
    for name in FLATTENED_ARCHITECTURES:
        conversion.TEXT_MODEL_MAP[name] = "deci"  # the module get_model_class imports before its lookup


def main(argv: Sequence[str]) -> None:
    llama_cpp, *converter_args = argv
    sys.path.insert(0, llama_cpp)
    import convert_hf_to_gguf  # puts the tree's gguf-py on sys.path

    register_flattened_converter()
    sys.argv = ["convert_hf_to_gguf.py", *converter_args]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main(sys.argv[1:])
