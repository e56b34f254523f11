"""Photo-like JPEG uploads for the server benchmarks, deterministic.

A camera photo is smooth at the pixel scale (optics, demosaicing, compression) with a little
sensor grain, and JPEG files of it are a few bytes a pixel at quality 90. Noise or a sine
pattern has the wrong size and decode cost, so the benchmarks send a scene of the synthetic
validation split (``model/data/synthetic.py``: solids and people on a textured plane, with
haze and light) rendered at a moderate size, upscaled bicubically to the camera's size, with
mild Gaussian grain, saved at quality 90.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from model.data.synthetic import SyntheticScenes

SCENE_SIDE = 640
"""Longest side of the rendered scene before it is upscaled (about 0.5 s to render)."""
GRAIN = 1.5
"""Standard deviation of the grain, in 0-255 levels."""
GRAIN_ROWS = 256  # the grain is added this many rows at a time: 39-MP images stay small


def scene_rgb(width: int, height: int, index: int = 1) -> np.ndarray:
    """Validation scene ``index`` rendered with its longest side at ``SCENE_SIDE`` (or less),
    in the aspect of ``width`` x ``height``: RGB uint8."""
    shrink = min(1.0, SCENE_SIDE / max(width, height))
    size = (max(8, round(height * shrink)), max(8, round(width * shrink)))
    return SyntheticScenes(size, index + 1, split="val")[index].image


def photo_rgb(width: int, height: int, index: int = 1, seed: int = 0) -> np.ndarray:
    """The scene at ``width`` x ``height``: bicubic upscale plus grain (module docstring)."""
    scene = Image.fromarray(scene_rgb(width, height, index))
    rgb = np.asarray(scene.resize((width, height), Image.Resampling.BICUBIC)).copy()
    rng = np.random.default_rng(seed)
    for start in range(0, height, GRAIN_ROWS):
        band = rgb[start : start + GRAIN_ROWS]
        grain = rng.normal(0.0, GRAIN, band.shape).astype(np.float32)
        band[...] = np.clip(np.rint(band + grain), 0, 255).astype(np.uint8)
    return rgb


def photo_jpeg(width: int, height: int, index: int = 1, quality: int = 90) -> bytes:
    """``photo_rgb`` as a baseline JPEG of the given quality (4:2:0, as cameras save them)."""
    buffer = io.BytesIO()
    Image.fromarray(photo_rgb(width, height, index)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def parse_size(text: str) -> tuple[int, int]:
    """``"4032x3024"`` -> (width, height)."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)
