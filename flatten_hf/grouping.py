"""Which adjacent layers to flatten together: FlattenGPT's greedy merge on a similarity matrix.

S[i, j] is the mean per-token cosine similarity between the hidden states entering layers i and j.
Flattening runs a group's layers on the group's first input, so a group is only as good as the
similarity of its first and last members' inputs: the candidate merge of adjacent groups [a..b] and
[b+1..d] is scored S[a, d] (the paper's "delete row l and column l-1" rule). Each step merges the
best-scoring adjacent pair until the target depth is reached; groups may grow to three or more.
"""

from __future__ import annotations

import torch


class SimilarityAccumulator:
    """Mean per-token cosine similarity between the inputs of every pair of layers, on a token subset.

    Feed it the normalised hidden states entering layer 0, 1, ... in order; memory is one
    [tokens, hidden] float16 matrix per layer.
    """

    def __init__(self, max_tokens: int = 8192) -> None:
        self.max_tokens = max_tokens
        self.states: list[torch.Tensor] = []

    def add(self, hidden: list[torch.Tensor]) -> None:
        flat = torch.cat([h.reshape(-1, h.shape[-1]) for h in hidden])
        stride = max(1, flat.shape[0] // self.max_tokens)
        sub = flat[::stride][: self.max_tokens].float()
        self.states.append(torch.nn.functional.normalize(sub, dim=-1).half())

    def matrix(self) -> torch.Tensor:
        n = len(self.states)
        s = torch.eye(n, dtype=torch.float64)
        for i in range(n):
            for j in range(i + 1, n):
                s[i, j] = s[j, i] = (self.states[i].float() * self.states[j].float()).sum(-1).mean().item()
        return s


def greedy_groups(similarity: torch.Tensor, num_merges: int, max_group_size: int | None = None) -> list[list[int]]:
    """Merge adjacent groups `num_merges` times, each time the pair [a..b] + [b+1..d] with the largest S[a, d]."""
    groups = [[i] for i in range(similarity.shape[0])]
    for _ in range(num_merges):
        best, best_score = None, -float("inf")
        for k in range(len(groups) - 1):
            if max_group_size and len(groups[k]) + len(groups[k + 1]) > max_group_size:
                continue
            score = similarity[groups[k][0], groups[k + 1][-1]].item()
            if score > best_score:
                best, best_score = k, score
        if best is None:
            raise ValueError(f"Cannot merge {num_merges} times with groups of at most {max_group_size} layers.")
        groups[best : best + 2] = [groups[best] + groups[best + 1]]
    return groups
