"""Task losses and router aux losses against their definitions."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.losses import (
    balanced_bce_loss,
    classes_loss,
    load_balance_loss,
    multitask_loss,
    mutual_information_loss,
    vector_loss,
)
from model.model import ModelOutput
from model.tasks import IGNORE_INDEX, TASKS


def test_classes_loss_skips_ignored_pixels_and_survives_all_ignored():
    logits = torch.randn(2, 4, 5, 5)
    target = torch.randint(0, 4, (2, 5, 5))
    noisy = target.clone()
    noisy[:, 0] = IGNORE_INDEX
    expected = F.cross_entropy(
        logits.permute(0, 2, 3, 1)[:, 1:].reshape(-1, 4), target[:, 1:].reshape(-1)
    )
    torch.testing.assert_close(classes_loss(logits, noisy), expected)
    assert classes_loss(logits, torch.full_like(target, IGNORE_INDEX)).item() == 0.0


def test_balanced_bce_weights_positives_by_negative_share():
    logits = torch.randn(1, 1, 4, 4)
    target = torch.zeros(1, 1, 4, 4)
    target[..., 0, :] = 1  # 4 positives, 12 negatives: w = 12/16
    p = torch.sigmoid(logits)
    w = 0.75
    manual = -(w * target * p.log() + (1 - w) * (1 - target) * (1 - p).log()).mean()
    torch.testing.assert_close(balanced_bce_loss(logits, target, None), manual)
    fixed = -(0.95 * target * p.log() + 0.05 * (1 - target) * (1 - p).log()).mean()
    torch.testing.assert_close(balanced_bce_loss(logits, target, 0.95), fixed)
    target[..., 1, :] = IGNORE_INDEX  # ignored pixels change nothing when their logits change
    moved = logits.clone()
    moved[..., 1, :] += 5
    torch.testing.assert_close(
        balanced_bce_loss(logits, target, 0.95), balanced_bce_loss(moved, target, 0.95)
    )


def test_vector_loss_is_zero_for_the_right_direction_and_skips_invalid_pixels():
    target = F.normalize(torch.randn(2, 3, 4, 4), dim=1)
    assert vector_loss(target * 7.0, target).item() == pytest.approx(0.0, abs=1e-6)
    target[:, :, 0] = IGNORE_INDEX
    raw = target.clone()
    raw[:, :, 0] = torch.randn(2, 3, 4)  # anything on invalid pixels
    assert vector_loss(raw, target).item() == pytest.approx(0.0, abs=1e-6)
    opposite = 2 * target[:, :, 1:].abs().mean()  # |-t - t| over valid elements
    assert vector_loss(-raw, target).item() == pytest.approx(opposite.item(), rel=1e-5)


def reference_mutual_information(probs: np.ndarray, tasks: np.ndarray, num_tasks: int) -> float:
    """MI = H(E) - sum_t P(t) H(E|t), from token-level p(e|x)."""
    flat = probs.reshape(-1, probs.shape[-1])
    token_task = np.repeat(tasks, probs.shape[1])
    p_expert = flat.mean(0)
    entropy = -(p_expert * np.log(p_expert)).sum()
    conditional = 0.0
    for t in range(num_tasks):
        rows = flat[token_task == t]
        if len(rows):
            p = rows.mean(0)
            conditional += len(rows) / len(flat) * -(p * np.log(p)).sum()
    return entropy - conditional


def test_mutual_information_loss_matches_entropy_form():
    probs = torch.softmax(torch.randn(5, 7, 6) * 2, dim=-1)
    tasks = torch.tensor([0, 2, 2, 1, 0])
    expected = reference_mutual_information(probs.numpy(), tasks.numpy(), 4)  # task 3 absent
    assert mutual_information_loss(probs, tasks, 4).item() == pytest.approx(-expected, rel=1e-5)


def test_mutual_information_extremes():
    one_hot = torch.eye(3).repeat_interleave(2, 0)[:, None, :].expand(6, 4, 3)  # task t -> e=t
    tasks = torch.arange(3).repeat_interleave(2)
    assert mutual_information_loss(one_hot, tasks, 3).item() == pytest.approx(-math.log(3))
    same = torch.full((6, 4, 3), 1 / 3)
    assert mutual_information_loss(same, tasks, 3).item() == pytest.approx(0.0, abs=1e-6)


def test_load_balance_is_one_when_uniform_and_grows_when_collapsed():
    tasks = torch.tensor([0, 1])
    uniform = torch.full((2, 8, 4), 0.25)
    selected = torch.eye(4).repeat(2, 1)[None].expand(2, 8, 4)  # each expert picked equally
    assert load_balance_loss(uniform, selected, tasks, 3).item() == pytest.approx(1.0)
    collapsed = torch.zeros(2, 8, 4)
    collapsed[..., 0] = 1
    assert load_balance_loss(collapsed, collapsed, tasks, 3).item() == pytest.approx(4.0)


def test_multitask_loss_weights_tasks_by_the_registry():
    maps = {"semseg": torch.randn(1, 6, 4, 4), "edges": torch.randn(1, 1, 4, 4)}
    targets = {
        "semseg": torch.randint(0, 6, (1, 4, 4)),
        "edges": (torch.rand(1, 1, 4, 4) > 0.5).float(),
    }
    aux = {"mi": torch.tensor(-0.25)}
    total, terms = multitask_loss(
        ModelOutput(maps, torch.zeros(1, 2, 0), torch.zeros(1, 2), aux), targets
    )
    expected = sum(TASKS[t].loss_weight * terms[t] for t in maps) - 0.25
    torch.testing.assert_close(total, expected)
    assert terms["aux/mi"].item() == -0.25
    with pytest.raises(ValueError, match="targets missing"):
        multitask_loss(
            ModelOutput(maps, torch.zeros(1, 2, 0), torch.zeros(1, 2)),
            {"semseg": targets["semseg"]},
        )


def test_a_map_with_nothing_salient_teaches_only_under_a_fixed_positive_weight():
    # The per-map balance gives a map without positives a negative weight of 0: a photo (or a
    # crop) with nothing salient teaches nothing; a fixed weight (--positive-weight) does.
    logits = torch.full((1, 1, 4, 4), 2.0, requires_grad=True)  # "salient" everywhere
    empty = torch.zeros(1, 1, 4, 4)
    assert balanced_bce_loss(logits, empty, None).item() == 0.0
    fixed = balanced_bce_loss(logits, empty, 0.5)
    assert fixed.item() == pytest.approx(0.5 * math.log1p(math.exp(2.0)), rel=1e-6)
    fixed.backward()
    assert (logits.grad > 0).all()  # pushes every pixel towards "not salient"


@pytest.mark.parametrize("positive_weight", [None, 0.8])
def test_a_soft_target_weighs_the_positive_and_negative_terms_by_its_probability(
    positive_weight,
):
    logits = torch.randn(1, 1, 4, 4, requires_grad=True)
    soft = torch.rand(1, 1, 4, 4)
    p = torch.sigmoid(logits)
    w = 1 - soft.mean() if positive_weight is None else positive_weight
    manual = -(w * soft * p.log() + (1 - w) * (1 - soft) * (1 - p).log()).mean()
    loss = balanced_bce_loss(logits, soft, positive_weight)
    torch.testing.assert_close(loss, manual)
    loss.backward()
    optimum = w * soft / (w * soft + (1 - w) * (1 - soft))  # where each pixel's gradient is 0
    torch.testing.assert_close(torch.sigmoid(logits.detach()) > optimum, logits.grad > 0)


def test_multitask_loss_takes_the_runs_positive_weights():
    maps = {"saliency": torch.randn(1, 1, 4, 4)}
    targets = {"saliency": (torch.rand(1, 1, 4, 4) > 0.8).float()}
    output = ModelOutput(maps, torch.zeros(1, 2, 0), torch.zeros(1, 2))
    _, default = multitask_loss(output, targets)
    _, fixed = multitask_loss(output, targets, {"saliency": 0.5})
    torch.testing.assert_close(
        default["saliency"], balanced_bce_loss(maps["saliency"], targets["saliency"], None)
    )
    torch.testing.assert_close(
        fixed["saliency"], balanced_bce_loss(maps["saliency"], targets["saliency"], 0.5)
    )
