"""CoMe's channel sensitivity: how much each MLP channel or key/value group writes into the residual stream.

For a linear map W ([out, in]) reading activations a, CoMe scores input channel j by
E_t |a_{t,j}| * ||W[:, j]||_1 (activation intensity times weight norm). The expectation is taken
over all calibration tokens, which equals CoMe's mean over samples of per-sample token means for
equal-length samples.
"""

from __future__ import annotations

import torch


def channel_sensitivity(mean_abs_input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """s_j = E|a_j| * ||W[:, j]||_1 for `weight` = W in the `nn.Linear` layout [out, in]."""
    return mean_abs_input.double() * weight.detach().abs().double().sum(0)


def kv_group_sensitivity(mean_abs_attention: torch.Tensor, o_proj: torch.Tensor, n_rep: int,
                         head_dim: int) -> torch.Tensor:
    """Per key/value group, the mean channel sensitivity over its query heads' output channels.

    `mean_abs_attention` is E|o_c| of the attention output before o_proj (all query heads side by
    side); the channels of group g are those of query heads g*n_rep ... (g+1)*n_rep - 1.
    """
    return channel_sensitivity(mean_abs_attention, o_proj).view(-1, n_rep * head_dim).mean(1)
