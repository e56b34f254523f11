"""Feature distillation: a ViT's base weights trained to reproduce a frozen ImageNet
EfficientNet-Lite's feature map on real photos, then written as a ViT weights file that
``python -m model.train --pretrained`` loads in place of the single-task stage (the paper's
frozen pretrained backbone, made here from the only ImageNet weights there are).

    python -m model.distill --preset photo-distilled --data /data/photos --out runs/distill
    python -m model.train --preset photo-distilled --data /data/photos --out runs/pd \
        --pretrained runs/distill/vit.pth

Two students: a plain ViT (``photo-distilled``) learns the stride-16 map from pixels; the hybrid
(``photo``, whose patch embedding already *is* that map) learns the map after the network's
last two stages (stride 32, what EfficientNet's classifier reads): ImageNet's deeper features
put into the transformer blocks, with no CNN stage added to the served graph. A teacher map
coarser than the student's grid is resized to it (bilinear). ``--teacher-stages`` overrides.

The student is the preset's backbone (patch embedding, position embedding, blocks, norms; one
stream per image); a linear map from its last block's normalised tokens to the teacher's
channels is trained with it and dropped afterwards. Loss: mean squared error against the
teacher's map standardised per channel (statistics of the first batch's photos). Photos are the
photo set's training split through ``PhotoCrop`` (random scale and crop), labels unused.
Resumable (``OUT/distill.pt``); the schedule is the preset's single-task stage (steps, lr).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.cli import run
from model.data.mixed import PhotoCrop
from model.data.photos import PhotoSet
from model.data.photos.tree import item_dir, read_png
from model.data.transforms import image_tensor
from model.efficientnet import STAGES, STRIDE16_STAGES, pretrained_lite
from model.model import ASEModel
from model.presets import TrainConfig, preset
from model.stages import base_parameter_names, learning_rate, make_optimizer
from model.trainer import new_model

TEACHER = "efficientnet_lite0"


class Distiller(nn.Module):
    """The student backbone plus its linear map to the teacher's channels."""

    def __init__(self, model: ASEModel, channels: int) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.to_teacher = nn.Linear(model.config.backbone.width, channels)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> (B, channels, grid, grid)."""
        streams = torch.arange(images.shape[0], device=images.device)
        features, *_ = self.backbone(images, streams, torch.zeros_like(streams))
        tokens = self.to_teacher(features[-1])  # (B, grid*grid, channels)
        grid = self.backbone.grid
        return tokens.transpose(1, 2).reshape(images.shape[0], -1, grid, grid)


def on_grid(teacher_map: Tensor, grid: int) -> Tensor:
    """The teacher's map (B, C, g, g) at the student's grid: bilinear where g differs (the
    stride-32 map has half the hybrid's 16-px grid)."""
    if teacher_map.shape[-1] == grid:
        return teacher_map
    return F.interpolate(teacher_map, size=(grid, grid), mode="bilinear", align_corners=False)


class PhotoImages:
    """The training photos' images alone (labels unused here), decoded once and kept."""

    def __init__(self, root: str | Path) -> None:
        self.root, self.records = Path(root), PhotoSet(root, "train").records
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8."""
        if index not in self._cache:
            self._cache[index] = read_png(item_dir(self.root, self.records[index].id) / "image.png")
        return self._cache[index]


def photo_batch(photos: PhotoImages, crop: PhotoCrop, batch: int, rng) -> Tensor:
    """``batch`` random windows of random training photos, normalised (B, 3, H, W)."""
    picks = rng.integers(0, len(photos), batch)
    return torch.stack([image_tensor(crop.image(photos[int(i)], rng)) for i in picks])


def student_optimizer(
    model: ASEModel, distiller: Distiller, base: frozenset[str], config: TrainConfig
):
    """AdamW on the backbone's base weights (what the single-task stage would train) and the
    map to the teacher; nothing else of the model moves."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in base and name.startswith("backbone."))
    return make_optimizer(distiller, config.weight_decay)


def vit_weights(model: ASEModel, base: frozenset[str]) -> dict[str, Tensor]:
    """The backbone's base weights under timm's names (``model/pretrained.py`` maps back)."""
    return {
        name.removeprefix("backbone.").replace(".base.", "."): value.detach().clone()
        for name, value in model.named_parameters()
        if name in base and name.startswith("backbone.")
    }


def default_teacher_stages(config: TrainConfig) -> int:
    """The teacher's stages for the preset's student: all seven for a hybrid (its patch
    embedding is the stride-16 map already), the stride-16 map for a plain ViT."""
    return STRIDE16_STAGES if config.model.backbone.embed == "patch" else len(STAGES)


def distill(
    config: TrainConfig,
    out: Path,
    resume: bool = False,
    teacher_stages: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) the distillation into ``out`` from the teacher's first
    ``teacher_stages`` stages (``default_teacher_stages``); returns the last logged record."""
    out.mkdir(parents=True, exist_ok=True)
    teacher_stages = teacher_stages or default_teacher_stages(config)
    model = new_model(config, pretrained=None)  # a hybrid's CNN with its ImageNet weights
    teacher = pretrained_lite(TEACHER, stages=teacher_stages)
    distiller = Distiller(model, teacher.channels)
    base = base_parameter_names(model)  # before the optimiser changes what takes gradients
    optimizer = student_optimizer(model, distiller, base, config)
    size = config.model.backbone.image_size
    photos = PhotoImages(config.data.root or "")
    crop = PhotoCrop(size, photometric=False)
    state = _resume(out, distiller, optimizer, teacher_stages) if resume else None
    step = state["step"] if state else 0
    stats = state["stats"] if state else _teacher_stats(teacher, photos, crop, config)
    record: dict[str, Any] = {}
    clock = time.perf_counter()
    while step < config.single_task.steps:
        # a pure function of (seed, step): a resumed run sees the batches it would have seen
        rng = np.random.default_rng([config.seed, 2, step])
        images = photo_batch(photos, crop, config.batch_size, rng)
        with torch.no_grad():
            target = on_grid((teacher(images) - stats["mean"]) / stats["std"], model.backbone.grid)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config.single_task, step)
        loss = F.mse_loss(distiller(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            trainable = [p for p in distiller.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        step += 1
        if step % 10 == 0 or step == config.single_task.steps:
            rate = config.batch_size * 10 / (time.perf_counter() - clock)
            record = {"step": step, "loss": float(loss.detach()), "images_per_s": rate}
            with (out / "log.jsonl").open("a") as log:
                log.write(json.dumps(record) + "\n")
            clock = time.perf_counter()
        if step % max(config.checkpoint_every, 1) == 0 or step == config.single_task.steps:
            _save(out, distiller, optimizer, step, stats, teacher_stages)
    torch.save(vit_weights(model, base), out / "vit.pth")
    return record


def _teacher_stats(teacher, photos, crop, config: TrainConfig) -> dict[str, Tensor]:
    """Per-channel mean and std of the teacher's map over 32 photo windows."""
    images = photo_batch(photos, crop, 32, np.random.default_rng([config.seed, 3]))
    with torch.no_grad():
        maps = teacher(images)  # (32, C, g, g)
    mean, std = maps.mean(dim=(0, 2, 3), keepdim=True), maps.std(dim=(0, 2, 3), keepdim=True)
    return {"mean": mean, "std": std + 1e-3}


def _save(out: Path, distiller: Distiller, optimizer, step: int, stats, stages: int) -> None:
    payload = {
        "distiller": distiller.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "stats": stats,
        "teacher_stages": stages,
    }
    torch.save(payload, out / "distill.pt.tmp")
    (out / "distill.pt.tmp").replace(out / "distill.pt")


def _resume(out: Path, distiller: Distiller, optimizer, stages: int) -> dict[str, Any]:
    payload = torch.load(out / "distill.pt", map_location="cpu", weights_only=True)
    saved = payload.get("teacher_stages", STRIDE16_STAGES)  # files from before the option
    if saved != stages:
        raise ValueError(
            f"{out}: distilled from {saved} teacher stages, asked to resume with {stages}"
        )
    distiller.load_state_dict(payload["distiller"])
    optimizer.load_state_dict(payload["optimizer"])
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="photo-distilled")
    parser.add_argument("--data", required=True, help="the photo set's root")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, help="distillation steps (the preset's stage 1)")
    parser.add_argument(
        "--teacher-stages",
        type=int,
        choices=(STRIDE16_STAGES, len(STAGES)),
        help="EfficientNet-Lite0 stages the teacher runs: 5 = the stride-16 map (a plain ViT's "
        "default), 7 = stride 32 (a hybrid's)",
    )
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = preset(args.preset)
    config = replace(config, data=replace(config.data, root=args.data))
    if args.steps is not None:
        config = replace(config, single_task=replace(config.single_task, steps=args.steps))
    return distill(config, args.out, args.resume, args.teacher_stages)


def cli() -> None:
    run(main)


if __name__ == "__main__":
    cli()
