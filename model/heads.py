"""Task heads: a light decoder per task, and the per-kind post-processing of its output.

Why this decoder: the paper leaves the head open, and the cost that matters when serving is
per stream. Multi-level features (a few evenly spaced blocks) give the head both early,
spatially precise and late, semantic tokens, as in DPT/SETR-MLA, yet a 1x1 projection per
level, a sum and two 3x3 convolutions keep it far cheaper than the backbone. A per-pixel
channel LayerNorm rather than BatchNorm keeps every stream independent of the others in its
batch (a request's result must not depend on who it was batched with). A 2x bilinear step
before the last conv, then bilinear to full resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.tasks import TaskKind


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel. Like GroupNorm it is per sample, but it
    needs no group reshape, so a head given zero streams (a task nobody asked for) still runs
    in ONNX Runtime, whose Reshape rejects (0, groups, -1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (S, C, H, W)


def _conv_block(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False), ChannelNorm(channels), nn.GELU()
    )


def head_width(dim: int) -> int:
    """Decoder channels: half the backbone width, at least 16."""
    return max(16, dim // 2)


class DenseHead(nn.Module):
    def __init__(self, dim: int, levels: int, grid: int, channels: int) -> None:
        super().__init__()
        hidden = head_width(dim)
        self.grid = grid
        self.project = nn.ModuleList(nn.Conv2d(dim, hidden, 1) for _ in range(levels))
        self.fuse = _conv_block(hidden)
        self.refine = _conv_block(hidden)
        self.classify = nn.Conv2d(hidden, channels, 1)

    def forward(self, features: list[Tensor], streams: Tensor, size: tuple[int, int]) -> Tensor:
        """features: per level (S, grid*grid, d); streams (S_t,) indices of this task's streams
        -> raw output (S_t, C, H, W) at ``size``."""
        x = sum(
            project(self._to_map(level.index_select(0, streams)))
            for project, level in zip(self.project, features, strict=True)
        )  # (S_t, hidden, grid, grid)
        x = self.fuse(x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.classify(self.refine(x))  # (S_t, C, 2*grid, 2*grid)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def _to_map(self, tokens: Tensor) -> Tensor:
        streams, _, dim = tokens.shape
        return tokens.transpose(1, 2).reshape(streams, dim, self.grid, self.grid)  # (S, d, g, g)


def postprocess(kind: TaskKind, raw: Tensor) -> Tensor:
    """Head output -> prediction: ``classes`` keep their logits (argmax is the consumer's),
    ``probability`` -> sigmoid, ``vector`` -> unit vectors over the channel axis."""
    if kind == "classes":
        return raw
    if kind == "probability":
        return torch.sigmoid(raw)
    if kind == "vector":
        return F.normalize(raw, p=2.0, dim=1, eps=1e-6)
    raise ValueError(f"unknown task kind {kind!r}")
