"""Which block hurts least when it is skipped: the language-model loss with each single block left out.

Block Influence (ShortGPT's rule, `similarity.block_influence`) rates a block by how far it turns the
residual stream; what a user loses is next-token loss. `SkipLoss` measures that directly alongside a
layer-wise run: while the runner pushes the calibration batches through block k, every earlier
"skip j" stream (block j left out, the blocks after it run as usual) is pushed through block k too,
so each block is built once and the whole measurement costs about n/2 extra passes over the tokens it
scores, n the number of blocks, on top of the run itself.

On SmolLM2-135M flattened at ratio 0.2 and then cut by three blocks, the blocks this loss picks on the
calibration tokens leave a lower perplexity in and out of the calibration domain than the three of
lowest Block Influence (docs/generalization.md, "Flatten the first merges, remove the rest").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .calibration import LayerwiseRunner


@torch.no_grad()
def next_token_loss(model: PreTrainedModel, hidden: list[torch.Tensor], batches: list[torch.Tensor]) -> float:
    """Mean next-token cross-entropy of the final hidden states `hidden` of the token ids `batches`.

    The logits are formed one sequence at a time, in float32: a batch of them is sequences x tokens x
    vocabulary (8 x 512 x 49152 floats = 0.8 GB for SmolLM2), the largest tensor of the whole run.
    """
    norm, head = model.model.norm, model.get_output_embeddings()
    total, count = 0.0, 0
    for h, ids in zip(hidden, batches):
        for row, labels in zip(h, ids.to(h.device)):
            logits = head(norm(row[:-1].to(head.weight.dtype))).float()
            total += F.cross_entropy(logits, labels[1:], reduction="sum").item()
            count += labels.numel() - 1
    return total / count


class SkipLoss:
    """Follows a layer-wise run and gives, at its end, the loss increase of skipping each block alone.

    Args:
        runner: the run being followed, positioned before the first block; it is never advanced here.
        batches: which of its batches are scored (a slice): the first ones for cheap statistics, or those
            held out of the refits, so that the loss is measured on tokens no block was fitted to.

    Call `step(block, layer_type, inputs)` for every block of the compressed model in order, with the
    runner's inputs of that block (all batches), then `increases(model, final_hidden)`.
    """

    def __init__(self, runner: LayerwiseRunner, batches: slice) -> None:
        self.runner, self.batches = runner.view(batches), batches
        self.streams: list[list[torch.Tensor]] = []  # stream j: the scored batches with block j skipped

    @torch.no_grad()
    def step(self, block: nn.Module, layer_type: str, inputs: list[torch.Tensor]) -> None:
        """Run `block` on every earlier skip stream, then open the stream that skips it (its own inputs)."""
        self.streams = [self.runner.run(block, layer_type, inputs=stream) for stream in self.streams]
        self.streams.append(inputs[self.batches])

    def increases(self, model: PreTrainedModel, final_hidden: list[torch.Tensor]) -> tuple[float, list[float]]:
        """(the loss of the whole compressed model, each block's loss increase when it alone is skipped)."""
        base = next_token_loss(model, final_hidden[self.batches], self.runner.batches)
        return base, [next_token_loss(model, stream, self.runner.batches) - base for stream in self.streams]
