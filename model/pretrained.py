"""Load a timm-format ViT checkpoint from a local file into the frozen backbone weights.

Our module names follow timm's, except that a LoRA-wrapped linear keeps its frozen weight
under ``.base``; so a timm key maps to ours by inserting ``.base`` where needed. timm's
``cls_token``, ``head.*`` and the like have no counterpart here (dense prediction: no class
token) and are reported as unexpected. The position embedding loses its prefix (class /
distillation) tokens and is resized bicubically when its grid differs from ours.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from model.vit import ViTBackbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedReport:
    loaded: tuple[str, ...]  # our keys filled from the file
    missing: tuple[str, ...]  # our pretrainable keys the file lacked (kept at init)
    unexpected: tuple[str, ...]  # file keys with no place here (ignored)
    pos_embed_grid: tuple[int, int] | None  # (file grid, our grid) when resized


def _timm_name(our_key: str) -> str | None:
    """The timm key of one of our backbone keys; None for parameters timm never has."""
    if our_key.startswith("task_embed") or ".adapter." in our_key:
        return None
    if our_key.startswith("patch_embed.cnn."):  # a hybrid's CNN: its own ImageNet file
        return None
    if our_key.endswith((".A", ".B")):
        return None
    return our_key.replace(".base.", ".")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained weights at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    return state


def resize_pos_embed(pos_embed: Tensor, grid: int) -> tuple[Tensor, int]:
    """timm pos_embed (1, prefix + g0*g0, d) -> (1, grid*grid, d); returns it and g0."""
    tokens = pos_embed.shape[1]
    file_grid = math.isqrt(tokens)
    prefix = tokens - file_grid**2  # class/distillation tokens in front
    patches = pos_embed[:, prefix:]  # (1, g0*g0, d)
    if file_grid == grid:
        return patches, file_grid
    dim = patches.shape[-1]
    image = patches.reshape(1, file_grid, file_grid, dim).permute(0, 3, 1, 2)  # (1, d, g0, g0)
    image = F.interpolate(image.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, grid * grid, dim), file_grid  # (1, g*g, d)


def load_timm_vit(
    backbone: ViTBackbone, path: str | Path, strict: bool = False
) -> PretrainedReport:
    """Copy a timm ViT's weights into ``backbone`` (in place). Shapes must agree except the
    position embedding's grid. ``strict``: a ValueError when any pretrainable key is missing."""
    path = Path(path)
    source = _read_state_dict(path)
    ours = backbone.state_dict()
    wanted = {name: key for key in ours if (name := _timm_name(key)) is not None}
    updates, grids = {}, None
    for name, key in wanted.items():
        if name not in source:
            continue
        value = source[name]
        if name == "pos_embed":
            value, file_grid = resize_pos_embed(value, backbone.grid)
            grids = (file_grid, backbone.grid) if file_grid != backbone.grid else None
        if value.shape != ours[key].shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(value.shape)}, expected {tuple(ours[key].shape)}"
            )
        updates[key] = value.to(ours[key].dtype)
    backbone.load_state_dict(updates, strict=False)
    report = PretrainedReport(
        loaded=tuple(sorted(updates)),
        missing=tuple(sorted(key for name, key in wanted.items() if name not in source)),
        unexpected=tuple(sorted(set(source) - set(wanted))),
        pos_embed_grid=grids,
    )
    _log_report(path, report)
    if strict and report.missing:
        raise ValueError(f"{path}: missing backbone weights {list(report.missing)}")
    return report


def _log_report(path: Path, report: PretrainedReport) -> None:
    log.info("loaded %d tensors from %s", len(report.loaded), path)
    if report.missing:
        log.warning("%s lacks %d backbone keys: %s", path, len(report.missing), report.missing)
    if report.unexpected:
        log.warning("%s: %d keys ignored: %s", path, len(report.unexpected), report.unexpected)
    if report.pos_embed_grid:
        log.info("position embedding resized from grid %d to %d", *report.pos_embed_grid)
