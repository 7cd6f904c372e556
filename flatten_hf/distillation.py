"""Hierarchical distillation targets and losses, read off the merge plan.

New layer k replaces the original layers `plan.groups[k]`, so after it the student's residual stream
should look like the teacher's after the *last* of those layers. That correspondence (CoMe's
"hierarchical distillation", which we apply to every method's plan) gives one hidden-state target
per new layer; a KL term on the logits ties the ends together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters import layer_sizes
from .plan import MergePlan


def teacher_layers(plan: MergePlan) -> list[int]:
    """For each new layer, the original layer after which the teacher's hidden state is its target.

    The last new layer always targets the teacher's last layer: both feed the final norm and the LM
    head, so original layers removed at the end of the model are absorbed by the last new layer.
    """
    return [group[-1] for group in plan.groups[:-1]] + [plan.source_num_hidden_layers - 1]


def changed_layers(plan: MergePlan, base_config) -> list[int]:
    """New layers that are not simply an original layer in its original place: merged or pruned
    layers, and layers that now follow removed ones (their input changed). Only these need training."""
    changed, previous = [], -1
    for k, sources in enumerate(plan.layers):
        s = sources[0]
        whole = (len(sources) == 1 and
                 (len(s.q_heads), len(s.kv_heads), len(s.mlp_channels)) == layer_sizes(base_config, s.layer) and
                 s.q_heads == sorted(s.q_heads) and s.mlp_channels == sorted(s.mlp_channels))
        if not whole or s.layer != previous + 1:
            changed.append(k)
        previous = sources[-1].layer
    if previous != plan.source_num_hidden_layers - 1 and changed[-1:] != [len(plan.layers) - 1]:
        changed.append(len(plan.layers) - 1)  # the last layers were removed: the new last layer stands in
    return changed


def hidden_state_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of ||h_s - h_t||^2 / ||h_t||^2: relative, so that deep layers (whose hidden
    states are larger) do not drown out shallow ones."""
    losses = [((s.float() - t.float()) ** 2).sum() / (t.float() ** 2).sum().clamp_min(1e-12)
              for s, t in zip(student, teacher)]
    return torch.stack(losses).mean()


def logit_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per token at `temperature`, scaled by T^2 (Hinton et al.)."""
    t = temperature
    student_log_probs = F.log_softmax(student_logits.float() / t, dim=-1).flatten(0, -2)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / t, dim=-1).flatten(0, -2)
    return F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean") * t * t
