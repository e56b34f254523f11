"""Feature distillation: a plain ViT learns EfficientNet-Lite0's stride-16 map on photos, and
the weights file it writes is what ``--pretrained`` loads."""

from dataclasses import replace

import torch

from model.distill import distill
from model.model import ASEModel
from model.presets import tiny
from model.pretrained import load_timm_vit
from tests.model.photo_tree import write_photo_tree


def test_distills_resumes_and_writes_a_loadable_backbone(tmp_path):
    root = write_photo_tree(tmp_path / "photos")
    config = tiny()
    backbone = replace(config.model.backbone, image_size=32, patch_size=16)
    config = replace(
        config,
        model=replace(config.model, backbone=backbone),
        data=replace(config.data, root=str(root)),
        single_task=replace(config.single_task, steps=3),
        checkpoint_every=1,
    )
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
