"""What each training stage trains, with which optimizer and learning-rate schedule.

``single_task`` trains the backbone's normally frozen base weights and one task's head on that
task alone (a stand-in for the paper's pretrained single-task ViT); ``multi_task`` freezes them
and trains LoRA, task embeddings, routers, experts and heads on all tasks. Step numbers run
across both stages (``model/presets.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.model import ASEModel
from model.presets import StageConfig, TrainConfig


def base_parameter_names(model: nn.Module) -> frozenset[str]:
    """Parameters frozen by construction (patch/position embeddings, norms, base linears):
    the "pretrained" weights that only the single-task stage trains."""
    return frozenset(name for name, p in model.named_parameters() if not p.requires_grad)


def set_stage(model: ASEModel, stage: str, base: frozenset[str], task: str) -> list[str]:
    """Mark what ``stage`` trains; returns the trainable parameter names."""
    head = f"heads.{task}."
    for name, parameter in model.named_parameters():
        if stage == "single_task":
            parameter.requires_grad_(name in base or name.startswith(head))
        else:
            parameter.requires_grad_(name not in base)
    return [name for name, p in model.named_parameters() if p.requires_grad]


CNN_PREFIX = "backbone.patch_embed.cnn."


def make_optimizer(
    model: nn.Module, weight_decay: float, cnn_lr_scale: float = 1.0
) -> torch.optim.AdamW:
    """AdamW on trainable parameters; no decay on vectors (norms, biases, embeddings' rows).
    Each group's ``lr_scale`` multiplies the schedule's rate: a hybrid's CNN weights take
    ``cnn_lr_scale``."""
    groups = []
    for scale, in_cnn in ((1.0, False), (cnn_lr_scale, True)):
        trainable = [
            p
            for name, p in model.named_parameters()
            if p.requires_grad and name.startswith(CNN_PREFIX) == in_cnn
        ]
        groups += [
            {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        for group in groups[-2:]:
            group["lr_scale"] = scale
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=0.0)


def learning_rate(stage: StageConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 1% of ``lr``; ``step`` counts within the stage."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    progress = (step - stage.warmup) / max(stage.steps - stage.warmup, 1)
    return stage.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def stage_bounds(config: TrainConfig) -> dict[str, tuple[int, int]]:
    """Global step range [start, stop) of each stage, in the order they run."""
    first = config.single_task.steps
    return {"single_task": (0, first), "multi_task": (first, config.total_steps)}


def stage_tasks(config: TrainConfig, stage: str) -> tuple[str, ...]:
    """The tasks whose losses ``stage`` trains on."""
    return (config.single_task_name,) if stage == "single_task" else config.model.tasks
