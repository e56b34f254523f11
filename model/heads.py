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


def _separable_block(channels: int) -> nn.Sequential:
    """Depthwise 3x3, pointwise 1x1, GELU: a refine step cheap enough at strides 4 and 2. No
    norm there: at 96x96 pixels per stream a per-pixel LayerNorm over the channels (and its
    transposes) costs ONNX Runtime more than the convolutions (docs/model_card.md, speed)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.Conv2d(channels, channels, 1),
        nn.GELU(),
    )


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


DETAIL_WIDTH = 16  # decoder channels at strides 4 and 2


class DetailDecoder(nn.Module):
    """A hybrid backbone's CNN maps in the head (as DPT-Hybrid's decoder reads its ResNet's
    early stages): the stride-8 map joins before the head's refine step, then two more 2x steps
    each add the stride-4 and stride-2 map, so edges and borders are drawn at half the input's
    resolution instead of an eighth. The maps are projected once per image (this task's 1x1
    convolutions), then gathered per stream; the per-stream work at strides 4 and 2 is
    depthwise-separable and narrow (``DETAIL_WIDTH``), a few MFLOP per stream."""

    def __init__(self, hidden: int, detail_channels: tuple[int, int, int]) -> None:
        super().__init__()
        widths = (hidden, DETAIL_WIDTH, DETAIL_WIDTH)  # at strides 8, 4, 2
        self.project = nn.ModuleList(
            nn.Conv2d(c, w, 1) for c, w in zip(detail_channels, widths, strict=True)
        )
        self.reduce = nn.Conv2d(hidden, DETAIL_WIDTH, 1)
        self.refine = nn.ModuleList(_separable_block(DETAIL_WIDTH) for _ in range(2))

    def gathered(self, level: int, detail: list[Tensor], images: Tensor) -> Tensor:
        """Level ``level``'s projected map, one per stream: (S_t, width, h, w)."""
        return self.project[level](detail[level]).index_select(0, images)

    def upsample(self, x: Tensor, detail: list[Tensor], images: Tensor) -> Tensor:
        """(S_t, hidden, stride 8) after the head's refine -> (S_t, DETAIL_WIDTH, stride 2)."""
        x = self.reduce(x)
        for level, refine in zip((1, 2), self.refine, strict=True):
            x = refine(_up(x) + self.gathered(level, detail, images))
        return x


class DenseHead(nn.Module):
    def __init__(
        self,
        dim: int,
        levels: int,
        grid: int,
        channels: int,
        detail_channels: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        hidden = head_width(dim)
        self.grid = grid
        self.project = nn.ModuleList(nn.Conv2d(dim, hidden, 1) for _ in range(levels))
        self.fuse = _conv_block(hidden)
        self.refine = _conv_block(hidden)
        self.detail = DetailDecoder(hidden, detail_channels) if detail_channels else None
        self.classify = nn.Conv2d(DETAIL_WIDTH if detail_channels else hidden, channels, 1)

    def forward(
        self,
        features: list[Tensor],
        streams: Tensor,
        size: tuple[int, int],
        detail: list[Tensor] | None = None,
        stream_image: Tensor | None = None,
    ) -> Tensor:
        """features: per level (S, grid*grid, d); streams (S_t,) indices of this task's streams;
        with a detail decoder, the backbone's detail maps per image and each stream's image
        -> raw output (S_t, C, H, W) at ``size``."""
        x = sum(
            project(self._to_map(level.index_select(0, streams)))
            for project, level in zip(self.project, features, strict=True)
        )  # (S_t, hidden, grid, grid)
        return decode(self, self.fuse(x), streams, size, detail, stream_image)

    def _to_map(self, tokens: Tensor) -> Tensor:
        streams, _, dim = tokens.shape
        return tokens.transpose(1, 2).reshape(streams, dim, self.grid, self.grid)  # (S, d, g, g)


def decode(
    head: nn.Module,
    x: Tensor,
    streams: Tensor,
    size: tuple[int, int],
    detail: list[Tensor] | None,
    stream_image: Tensor | None,
) -> Tensor:
    """A head's fused grid map (S_t, hidden, grid, grid) -> raw output (S_t, C, H, W): 2x up,
    refine (with the stride-8 detail map when the head has a ``DetailDecoder``), then to
    stride 2 with the finer maps, classify, bilinear to ``size``. Shared by ``DenseHead`` and
    its lean export form (``export/lean.py``), which have the same ``refine``, ``detail`` and
    ``classify``."""
    x = _up(x)  # (S_t, hidden, 2*grid, 2*grid): stride 8
    if head.detail is None:
        x = head.refine(x)
    else:
        images = stream_image.index_select(0, streams)  # (S_t,)
        x = head.refine(x + head.detail.gathered(0, detail, images))
        x = head.detail.upsample(x, detail, images)  # (S_t, DETAIL_WIDTH, 8*grid, 8*grid)
    return F.interpolate(head.classify(x), size=size, mode="bilinear", align_corners=False)


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
