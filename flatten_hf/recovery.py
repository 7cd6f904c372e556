"""Post-compression recovery: hierarchical distillation from the base model, with LoRA or full updates.

The student (a compressed model with a merge plan) learns to reproduce, after each new layer, the
teacher's hidden state after the last original layer that the new layer replaces (see
`flatten_hf.distillation`), plus the teacher's next-token distribution (KL on the logits). Only the
layers the plan changed train (LoRA adapters on them by default, as in FlattenGPT's recovery
fine-tuning: rank 8, lr 1e-4); the adapters are merged into the weights at the end, so the result is
again a plain stock or Flattened checkpoint with the same plan.

Memory: the teacher runs under `no_grad` on each batch and only the hidden states at the target
layers are kept, so the cost is one teacher forward per step, not a cache of teacher activations.
Determinism: the training text is drawn once from `seed`, step s always uses the same rows, and
LoRA's initialisation is seeded, so a run resumed from its state directory continues exactly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .adapters import adapter_for
from .distillation import changed_layers, hidden_state_loss, logit_kl, teacher_layers
from .plan import MergePlan

logger = logging.getLogger(__name__)

STATE_FILE = "recovery_state.pt"


@dataclass
class RecoveryConfig:
    """Options of `recover`.

    Args:
        steps: optimizer steps.
        batch_size: sequences per step.
        seq_len: tokens per sequence.
        learning_rate: AdamW learning rate (constant).
        train: 'lora' (low-rank adapters, merged on save) or 'full' (the layers' own weights).
        layers: 'changed' (the layers the merge plan changed, and those after removed layers) or 'all'.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        hidden_weight: weight of the hidden-state loss (relative MSE, mean over new layers).
        kl_weight: weight of the KL divergence of the logits.
        temperature: softmax temperature of the KL term.
        source: text source of the training sequences (its calibration part: never the evaluation text).
        seed: seed of the text sampling and of the adapters' initialisation.
        save_steps: write the resumable state every this many steps (0: never).
    """

    steps: int = 200
    batch_size: int = 2
    seq_len: int = 128
    learning_rate: float = 1e-4
    train: str = "lora"
    layers: str = "changed"
    lora_r: int = 8
    lora_alpha: int = 16
    hidden_weight: float = 1.0
    kl_weight: float = 1.0
    temperature: float = 1.0
    source: str = "wikipedia"
    seed: int = 0
    save_steps: int = 50

    def __post_init__(self) -> None:
        if self.train not in ("lora", "full"):
            raise ValueError(f"train must be 'lora' or 'full', got {self.train!r}.")
        if self.layers not in ("changed", "all"):
            raise ValueError(f"layers must be 'changed' or 'all', got {self.layers!r}.")
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 2:
            raise ValueError("steps and batch_size must be >= 1 and seq_len >= 2.")


def plan_of(config) -> MergePlan:
    """The merge plan of a compressed model's config, or a clear error for an uncompressed one."""
    if not getattr(config, "flatten", None):
        raise ValueError("recover needs a model compressed by flatten-hf: its config has no merge plan "
                         "(config.flatten). Compress it first with `flatten-hf compress`.")
    return MergePlan.from_config(config)


@contextmanager
def _layer_outputs(layers: nn.ModuleList, wanted: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Collect the hidden states leaving the given decoder layers during a forward pass."""
    seen: dict[int, torch.Tensor] = {}
    handles = [layers[i].register_forward_hook(
        lambda m, args, out, i=i: seen.__setitem__(i, out[0] if isinstance(out, tuple) else out)) for i in wanted]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def require_peft():
    """PEFT's `LoraConfig` and `get_peft_model`, or a one-line error naming the extra that installs them."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise RuntimeError("LoRA recovery needs peft: pip install 'flatten-hf[recover]' (or recover with "
                           "--train full, which needs nothing more).") from e
    return LoraConfig, get_peft_model


def _trainable(student: PreTrainedModel, train_layers: list[int], config: RecoveryConfig) -> nn.Module:
    """The student with only the chosen layers trainable: wrapped with LoRA adapters, or unfrozen."""
    for p in student.parameters():
        p.requires_grad_(False)
    if config.train == "full":
        for i in train_layers:
            for p in student.model.layers[i].parameters():
                p.requires_grad_(True)
        return student
    LoraConfig, get_peft_model = require_peft()
    torch.manual_seed(config.seed)  # LoRA's A matrices are initialised from the global generator
    targets = list(adapter_for(student.config).roles.projections)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=targets,
                      layers_to_transform=train_layers, layers_pattern="layers")
    return get_peft_model(student, lora)


def _save_state(state_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                config: RecoveryConfig, losses: list[float]) -> None:
    """Atomically write what a resumed run needs: the trainable tensors, the optimizer, the step."""
    state_dir.mkdir(parents=True, exist_ok=True)
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    tmp = state_dir / (STATE_FILE + ".tmp")
    torch.save({"step": step, "trainable": trainable, "optimizer": optimizer.state_dict(), "config": asdict(config),
                "losses": losses}, tmp)
    os.replace(tmp, state_dir / STATE_FILE)


def _load_state(state_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                config: RecoveryConfig) -> tuple[int, list[float]]:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return 0, []
    state = torch.load(path, weights_only=True)
    if state["config"] != asdict(config):
        changed = sorted(k for k in asdict(config) if state["config"].get(k) != asdict(config)[k])
        raise ValueError(f"{path} was written by a run with different options ({', '.join(changed)}); resume with the "
                         "same options, or delete the state directory to start over.")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    logger.info("resuming recovery from step %d (%s)", state["step"], path)
    return state["step"], state["losses"]


def recover(student: PreTrainedModel, teacher: PreTrainedModel, *, tokenizer=None, config: RecoveryConfig | None = None,
            input_ids: torch.Tensor | None = None, state_dir: str | os.PathLike | None = None) -> PreTrainedModel:
    """Distil `teacher` (the base model) into the compressed `student` along its merge plan.

    Args:
        student: a compressed model (its config holds the merge plan); it is trained in place.
        teacher: the model the plan was made from (same number of layers as the plan's source).
        tokenizer: tokenizes the training text (not needed with `input_ids`).
        config: see `RecoveryConfig`.
        input_ids: ready `[steps * batch_size, seq_len]` training ids, overriding the text source.
        state_dir: where to keep a resumable state; a run finding a state there continues from it. The
            caller removes it once the result is saved.

    Returns:
        The student with adapters merged (a plain model of the student's class), its plan recording the
        recovery (`config.flatten["method_params"]["recovery"]`).
    """
    config = config or RecoveryConfig()
    plan = plan_of(student.config)
    if teacher.config.num_hidden_layers != plan.source_num_hidden_layers:
        raise ValueError(f"The teacher has {teacher.config.num_hidden_layers} layers but the plan was made from a model "
                         f"with {plan.source_num_hidden_layers}; pass the plan's base model ({plan.base_model}).")
    if input_ids is None:
        if tokenizer is None:
            raise ValueError("recover needs a tokenizer to build its training text, or ready input_ids.")
        from .data import calibration_ids

        input_ids = calibration_ids(tokenizer, config.source, config.steps * config.batch_size, config.seq_len,
                                    config.seed)
    if input_ids.shape[0] < config.steps * config.batch_size:
        raise ValueError(f"input_ids has {input_ids.shape[0]} sequences; {config.steps} steps of {config.batch_size} "
                         "need more.")
    n_new = len(plan.layers)
    train_layers = list(range(n_new)) if config.layers == "all" else changed_layers(plan, teacher.config)
    if not train_layers:
        raise ValueError("The plan changed no layer (nothing was merged or removed): there is nothing to recover.")
    targets = teacher_layers(plan)
    scored = list(range(train_layers[0], n_new))  # layers before the first trained one match the teacher exactly
    device = student.device
    teacher.eval()
    model = _trainable(student, train_layers, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    state_path = Path(state_dir) if state_dir is not None else None
    start_step, losses = _load_state(state_path, model, optimizer, config) if state_path else (0, [])
    logger.info("recovery: training %d of %d layers (%s, %d parameters), %d steps x %d x %d tokens", len(train_layers),
                n_new, config.train, sum(p.numel() for p in params), config.steps, config.batch_size, config.seq_len)

    start = time.perf_counter()
    model.train()
    progress = tqdm(range(start_step, config.steps), desc="recover: distil", unit="step", initial=start_step,
                    total=config.steps)
    for step in progress:
        batch = input_ids[step * config.batch_size:(step + 1) * config.batch_size].to(device)
        with torch.no_grad(), _layer_outputs(teacher.model.layers, sorted({targets[k] for k in scored})) as t_hidden:
            t_logits = teacher(input_ids=batch.to(teacher.device), use_cache=False).logits
        with _layer_outputs(student.model.layers, scored) as s_hidden:
            s_logits = model(input_ids=batch, use_cache=False).logits
        hidden = hidden_state_loss([s_hidden[k] for k in scored], [t_hidden[targets[k]].to(device) for k in scored])
        kl = logit_kl(s_logits, t_logits.to(device), config.temperature)
        loss = config.hidden_weight * hidden + config.kl_weight * kl
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 6))
        progress.set_postfix(loss=f"{loss.item():.4f}", hidden=f"{hidden.item():.4f}", kl=f"{kl.item():.4f}")
        if state_path and config.save_steps and (step + 1) % config.save_steps == 0 and step + 1 < config.steps:
            _save_state(state_path, step + 1, model, optimizer, config, losses)
    seconds = time.perf_counter() - start
    model.eval()
    recovered = model.merge_and_unload() if config.train == "lora" else model
    for p in recovered.parameters():
        p.requires_grad_(False)
    record = {**asdict(config), "trained_layers": train_layers, "tokens": config.steps * config.batch_size * config.seq_len,
              "teacher": plan.base_model, "first_loss": losses[0] if losses else None,
              "last_loss": losses[-1] if losses else None, "seconds": round(seconds, 1)}
    plan.method_params["recovery"] = record
    recovered.config.flatten = plan.to_dict()
    logger.info("recovery done in %.1f s: loss %s -> %s", seconds, record["first_loss"], record["last_loss"])
    return recovered
