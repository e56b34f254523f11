"""Feature distillation: a plain ViT learns EfficientNet-Lite0's stride-16 map on photos (a
hybrid its stride-32 map), and the weights file it writes is what ``--pretrained`` loads."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.distill import default_teacher_stages, distill, on_grid
from model.efficientnet import pretrained_lite
from model.model import ASEModel
from model.presets import TrainConfig, tiny
from model.pretrained import load_timm_vit
from model.trainer import new_model
from tests.model.photo_tree import write_photo_tree


def distill_config(root: Path, steps: int, **backbone_changes) -> TrainConfig:
    """The tiny preset at 16-px patches on the photo tree at ``root``, checkpointing every step."""
    config = tiny()
    backbone = replace(config.model.backbone, patch_size=16, **backbone_changes)
    return replace(
        config,
        model=replace(config.model, backbone=backbone),
        data=replace(config.data, root=str(root)),
        single_task=replace(config.single_task, steps=steps),
        checkpoint_every=1,
    )


def test_distills_resumes_and_writes_a_loadable_backbone(tmp_path):
    config = distill_config(write_photo_tree(tmp_path / "photos"), 3, image_size=32)
    distill(config, tmp_path / "run")
    longer = replace(config, single_task=replace(config.single_task, steps=6))
    record = distill(longer, tmp_path / "run", resume=True)
    assert record["step"] == 6 and torch.isfinite(torch.tensor(record["loss"]))
    steps = [line for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(steps) == 2  # logged at step 3 (the first run's end) and 6; not again from 0
    fresh = ASEModel(config.model)
    before = fresh.backbone.patch_embed.proj.weight.clone()
    report = load_timm_vit(fresh.backbone, tmp_path / "run" / "vit.pth", strict=True)
    assert "patch_embed.proj.weight" in report.loaded and not report.unexpected
    assert not torch.equal(fresh.backbone.patch_embed.proj.weight, before)


def test_a_hybrid_student_learns_the_stride_32_map(tmp_path):
    """A hybrid's blocks learn the map after EfficientNet's last two stages by default (coarser
    than the student's grid: resized to it); its CNN keeps the ImageNet weights, the file loads
    into a new hybrid, and a resume with another teacher is refused."""
    root = write_photo_tree(tmp_path / "photos")
    config = distill_config(root, 2, image_size=64, embed="efficientnet_lite0")
    assert default_teacher_stages(config) == 7 and default_teacher_stages(tiny()) == 5
    record = distill(config, tmp_path / "run")
    assert record["step"] == 2 and torch.isfinite(torch.tensor(record["loss"]))
    student = new_model(config, pretrained=None)
    reference = pretrained_lite("efficientnet_lite0")
    assert torch.equal(student.backbone.patch_embed.cnn.stem.weight, reference.stem.weight)
    report = load_timm_vit(student.backbone, tmp_path / "run" / "vit.pth", strict=True)
    assert "patch_embed.proj.weight" in report.loaded and "pos_embed" in report.loaded
    assert not report.unexpected
    longer = replace(config, single_task=replace(config.single_task, steps=3))
    with pytest.raises(ValueError, match="7 teacher stages, asked to resume with 5"):
        distill(longer, tmp_path / "run", resume=True, teacher_stages=5)


def test_a_coarser_teacher_map_is_resized_to_the_grid():
    coarse = torch.arange(4.0).reshape(1, 1, 2, 2)
    assert on_grid(coarse, 2) is coarse
    fine = on_grid(coarse, 4)
    assert fine.shape == (1, 1, 4, 4)
    assert fine.mean().item() == pytest.approx(coarse.mean().item())
    assert fine[0, 0, 0, 0] < fine[0, 0, -1, -1]  # the corners keep their order
