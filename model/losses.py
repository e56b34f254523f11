"""Task losses (per kind, weighted by the task registry) and the routers' auxiliary losses.

Every loss averages over *valid* pixels only (label != IGNORE_INDEX) and stays finite when a
map has none (e.g. ``parts`` on an image without a person is all 255).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from model.tasks import IGNORE_INDEX, TASKS

if TYPE_CHECKING:
    from model.model import ModelOutput

FIXED_POSITIVE_WEIGHT = {"edges": 0.95}
"""Benchmark recipe: edges use balanced BCE with a fixed positive weight; saliency (absent
here) weighs positives by the fraction of negatives in its own label map. A run may fix more
(``TrainConfig.positive_weights``)."""


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    return (values * valid).sum() / valid.sum().clamp(min=1)


def classes_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy; logits (S, C, H, W), target (S, H, W) int, IGNORE_INDEX skipped."""
    target = target.long()
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    return _masked_mean(per_pixel, (target != IGNORE_INDEX).to(logits.dtype))


def balanced_bce_loss(logits: Tensor, target: Tensor, positive_weight: float | None) -> Tensor:
    """Balanced BCE: ``-[w y log p + (1-w)(1-y) log(1-p)]`` averaged over valid pixels.
    ``w`` is fixed when given, else the fraction of negatives among each map's valid pixels.
    logits (S, 1, H, W), target (S, 1, H, W) or (S, H, W) in [0, 1] (a soft target weighs
    both terms) or IGNORE_INDEX."""
    target = target.reshape(logits.shape).to(logits.dtype)
    valid = (target != IGNORE_INDEX).to(logits.dtype)
    labels = target * valid  # ignored pixels -> 0, masked out below anyway
    if positive_weight is None:
        positives = (labels * valid).sum(dim=(1, 2, 3), keepdim=True)
        weight = 1.0 - positives / valid.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    else:
        weight = torch.full_like(logits[:, :1, :1, :1], positive_weight)
    positive_term = weight * labels * F.logsigmoid(logits)
    negative_term = (1.0 - weight) * (1.0 - labels) * F.logsigmoid(-logits)
    return _masked_mean(-(positive_term + negative_term), valid)


def vector_loss(raw: Tensor, target: Tensor) -> Tensor:
    """L1 between L2-normalised predictions and targets; raw, target (S, 3, H, W). A pixel is
    valid where no channel of the target equals IGNORE_INDEX (invalid pixels are 255 in all
    channels). Averaged over valid pixels and channels."""
    valid = (target != IGNORE_INDEX).all(dim=1, keepdim=True).to(raw.dtype)  # (S, 1, H, W)
    prediction = F.normalize(raw, p=2.0, dim=1, eps=1e-6)
    error = (prediction - target * valid).abs()  # (S, 3, H, W)
    return (error * valid).sum() / (valid.sum() * raw.shape[1]).clamp(min=1)


def task_loss(
    task: str,
    raw: Tensor,
    target: Tensor,
    positive_weights: Mapping[str, float] = FIXED_POSITIVE_WEIGHT,
) -> Tensor:
    """Unweighted loss of one task's raw head output against its labels; a probability task
    not in ``positive_weights`` balances each map by its own share of negatives."""
    kind = TASKS[task].kind
    if kind == "classes":
        return classes_loss(raw, target)
    if kind == "probability":
        return balanced_bce_loss(raw, target, positive_weights.get(task))
    return vector_loss(raw, target)


def multitask_loss(
    outputs: ModelOutput,
    targets: dict[str, Tensor],
    positive_weights: Mapping[str, float] = FIXED_POSITIVE_WEIGHT,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total = sum over tasks in ``outputs.maps`` of registry weight x task loss, plus the
    (already weighted) router aux losses. ``targets[task]`` is aligned with
    ``outputs.maps[task]`` (same streams, same order). Returns (total, per-term dict): the
    unweighted task losses under their task names and aux terms under ``aux/<name>``."""
    missing = sorted(set(outputs.maps) - set(targets))
    if missing:
        raise ValueError(f"targets missing for task(s) {missing}")
    terms = {
        task: task_loss(task, raw, targets[task], positive_weights)
        for task, raw in outputs.maps.items()
    }
    total = sum(TASKS[task].loss_weight * loss for task, loss in terms.items())
    for name, value in outputs.aux.items():
        total = total + value
        terms[f"aux/{name}"] = value
    return total, terms


def _task_expert_joint(values: Tensor, stream_task: Tensor, num_tasks: int) -> Tensor:
    """Sum (S, tokens, E) over each task's streams and tokens -> (T, E)."""
    per_stream = values.sum(dim=1)  # (S, E)
    joint = per_stream.new_zeros(num_tasks, per_stream.shape[-1])
    return joint.index_add(0, stream_task, per_stream)


def mutual_information_loss(probs: Tensor, stream_task: Tensor, num_tasks: int) -> Tensor:
    """Mod-Squad's task-expert mutual-information loss, ``-MI(T; E)`` (minimised).

    With router probabilities p(e|x) (softmax over all routed logits) and x running over the
    tokens of the batch, the empirical joint is ``P(t, e) = (1/|X|) sum_{x in t} p(e|x)``; its
    marginals are ``P(t)`` (share of tokens from task t) and ``P(e)``. Then
    ``MI = sum_{t,e} P(t,e) log[P(t,e) / (P(t) P(e))] = H(E) - sum_t P(t) H(E | T=t)``:
    maximising it asks for balanced use of experts overall (high H(E)) while each task
    concentrates on few experts (low H(E|T)). probs (S, tokens, E), stream_task (S,) slots.
    """
    joint = _task_expert_joint(probs, stream_task, num_tasks)  # (T, E)
    joint = joint / joint.sum()
    p_task = joint.sum(dim=1, keepdim=True)  # (T, 1)
    p_expert = joint.sum(dim=0, keepdim=True)  # (1, E)
    ratio = joint / (p_task * p_expert).clamp(min=1e-12)
    mutual_information = torch.xlogy(joint, ratio.clamp(min=1e-12)).sum()
    return -mutual_information


def load_balance_loss(
    probs: Tensor, selected: Tensor, stream_task: Tensor, num_tasks: int
) -> Tensor:
    """Switch-style balancing per task router: ``E * sum_e f_e P_e`` with f_e the share of the
    task's top-k dispatches sent to expert e and P_e its mean router probability; 1 when
    uniform. Averaged over the tasks present. probs, selected (S, tokens, E)."""
    experts = probs.shape[-1]
    dispatched = _task_expert_joint(selected, stream_task, num_tasks)  # (T, E)
    probability = _task_expert_joint(probs, stream_task, num_tasks)  # (T, E)
    f = dispatched / dispatched.sum(dim=1, keepdim=True).clamp(min=1e-12)
    p = probability / probability.sum(dim=1, keepdim=True).clamp(min=1e-12)
    per_task = experts * (f * p).sum(dim=1)  # (T,)
    present = (probability.sum(dim=1) > 0).to(probs.dtype)
    return (per_task * present).sum() / present.sum().clamp(min=1)
