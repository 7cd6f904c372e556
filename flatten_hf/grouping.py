"""Which adjacent layers to flatten together: FlattenGPT's greedy merge on a similarity matrix.

S[i, j] is the similarity (see `SimilarityAccumulator`) between the hidden states entering layers i and j
(index n, one past the last layer, is the final hidden state). A candidate merge of adjacent groups [a..b]
and [b+1..d] is scored by one of two rules (`GROUP_SCORES`):

- ``output`` (FlattenGPT's default): S[a, d + 1], the group's input against its output: how little the whole
  block changes the residual stream (ShortGPT's Block Influence, ReplaceMe's cut criterion). Pruning a wide
  block back to one layer's width loses part of every member's update, so a block that changes little loses
  little.
- ``input`` (the paper's "delete row l and column l-1" rule): S[a, d]. Flattening runs a group's layers on
  the group's first input, so the group is only as good as the similarity of its first and last members'
  inputs; this rule never sees the last member's own update, and on Qwen2.5-Coder-0.5B it flattens early
  pairs whose inputs are alike but whose updates are large.

Each step merges the best-scoring adjacent pair until the target depth is reached; groups may grow to three
or more. Groups can also be given by hand (`parse_groups`, FlattenGPT's ``fixed_groups`` option), e.g. to place the
flattening where another method's plan removes layers.
"""

from __future__ import annotations

import torch

SIMILARITY_METRICS = ("cosine", "l2")
GROUP_SCORES = ("input", "output")


class SimilarityAccumulator:
    """Similarity between the inputs of every pair of layers, from the same tokens.

    - ``cosine`` (the paper's): the mean per-token cosine similarity; blind to how much the residual
      stream grows, so early layers, whose inputs are small, look as similar as middle ones.
    - ``l2``: one minus the relative squared distance, 1 - sum_t ||x_i - x_j||^2 / sqrt(sum_t ||x_i||^2
      sum_t ||x_j||^2): the error of standing in x_i for x_j relative to their size, which is what a
      group's refit has to make up for.

    Feed it the hidden states entering layer 0, 1, ... in order, then the final one (which the ``output``
    group score compares with); memory is one [tokens, hidden]
    float16 matrix per layer (unit vectors for cosine, the states themselves for l2).
    """

    def __init__(self, metric: str = "cosine") -> None:
        if metric not in SIMILARITY_METRICS:
            raise ValueError(f"similarity metric must be one of {SIMILARITY_METRICS}, got {metric!r}.")
        self.metric = metric
        self.states: list[torch.Tensor] = []

    def add(self, hidden: list[torch.Tensor]) -> None:
        flat = torch.cat([h.reshape(-1, h.shape[-1]) for h in hidden]).float()
        self.states.append((torch.nn.functional.normalize(flat, dim=-1) if self.metric == "cosine" else flat).half())

    def matrix(self) -> torch.Tensor:
        """From G = A A^T with A[i] the flattened states of layer i: one matmul for all pairs."""
        a = torch.stack(self.states).flatten(1).float()
        gram = (a @ a.T).double()
        if self.metric == "cosine":
            return gram / self.states[0].shape[0]
        norms = gram.diagonal()
        distance = norms[:, None] + norms[None, :] - 2 * gram
        scale = (norms[:, None] * norms[None, :]).sqrt()
        # Layers whose inputs are all zero (dead, degenerate): alike when both are zero, unlike otherwise, never NaN.
        return torch.where(scale > 0, 1 - distance / scale.clamp_min(1e-300), (distance == 0).double())


def merge_best_adjacent(groups: list[list[int]], score, max_group_size: int | None = None) -> list[list[int]]:
    """Merge the adjacent pair (k, k+1) with the highest `score(k)`, skipping pairs that would exceed
    `max_group_size` original layers."""
    allowed = [k for k in range(len(groups) - 1)
               if not max_group_size or len(groups[k]) + len(groups[k + 1]) <= max_group_size]
    if not allowed:
        raise ValueError(f"No adjacent groups can be merged within max_group_size={max_group_size}.")
    k = max(allowed, key=score)
    return groups[:k] + [groups[k] + groups[k + 1]] + groups[k + 2 :]


def merge_score(similarity: torch.Tensor, first: int, last: int, group_score: str = "output") -> float:
    """The score of a candidate group running from unit `first` to unit `last` (layers, or the current blocks
    when re-measured): S[first, last] (``input``) or S[first, last + 1] (``output``)."""
    if group_score not in GROUP_SCORES:
        raise ValueError(f"group score must be one of {GROUP_SCORES}, got {group_score!r}.")
    return similarity[first, last + (group_score == "output")].item()


def greedy_groups(similarity: torch.Tensor, num_merges: int, max_group_size: int | None = None,
                  group_score: str = "output") -> list[list[int]]:
    """Merge adjacent groups `num_merges` times, each time the pair [a..b] + [b+1..d] with the largest
    `merge_score` from a to d.

    `similarity` covers the n layers' inputs and, as its last row and column, the final hidden state.
    """
    groups = [[i] for i in range(similarity.shape[0] - 1)]
    for _ in range(num_merges):
        groups = merge_best_adjacent(
            groups, lambda k: merge_score(similarity, groups[k][0], groups[k + 1][-1], group_score), max_group_size)
    return groups


def parse_groups(text: str) -> list[list[int]]:
    """'3-4,12-18' -> [[3, 4], [12, ..., 18]]: runs of adjacent layers given by hand, each of two or more."""
    groups = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            a, b = int(first), int(last if sep else first)
        except ValueError:
            raise ValueError(f"--fixed-groups must be comma-separated layer ranges like '3-4,12-18', got {part.strip()!r}.") from None
        if b <= a:
            raise ValueError(f"--fixed-groups: {part.strip()!r} is not a run of two or more layers (first-last, first < last).")
        groups.append(list(range(a, b + 1)))
    for left, right in zip(groups, groups[1:]):
        if right[0] <= left[-1]:
            raise ValueError(f"--fixed-groups must be in order and must not overlap: {left[0]}-{left[-1]} then "
                             f"{right[0]}-{right[-1]}.")
    return groups


def given_groups(text: str, num_layers: int, num_merges: int) -> list[list[int]]:
    """Every layer's group, from `parse_groups(text)` (the layers it does not name are groups of one),
    checked against the model's depth and the number of layers to remove."""
    merged = parse_groups(text)
    if merged[-1][-1] >= num_layers:
        raise ValueError(f"--fixed-groups names layer {merged[-1][-1]}, but the model has layers 0-{num_layers - 1}.")
    removed = sum(len(g) - 1 for g in merged)
    if removed != num_merges:
        raise ValueError(f"--fixed-groups {text!r} removes {removed} layers, but --ratio/--num-layers asks for {num_merges} "
                         "by flattening (the layers to remove, less those --remove-fraction removes whole); give "
                         "groups whose sizes minus one add up to that.")
    starts = {g[0]: g for g in merged}
    groups, i = [], 0
    while i < num_layers:
        groups.append(starts.get(i, [i]))
        i += len(groups[-1])
    return groups
