"""HED computed directly in NumPy from the h5's Keras-layout weights: the independent check
of the ONNX graph that ``model.teachers.hed`` builds (different code, different layout, no
ONNX). Slow: for small images only (a few tens of pixels a side)."""

from __future__ import annotations

import numpy as np

from model.teachers.hed import BLOCK_CONVS, CAFFE_MEAN_BGR


def conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(H, W, in) * Keras kernel (kh, kw, in, out) with zero padding -> (H, W, out), float64."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(0, 1))
    # windows: (H, W, in, kh, kw)
    return np.einsum("hwcij,ijco->hwo", windows, kernel.astype(np.float64)) + bias


def max_pool_same(x: np.ndarray) -> np.ndarray:
    """2x2 stride-2 max pool; an odd last row or column is pooled alone (TF's 'same')."""
    height, width, channels = x.shape
    padded = np.full((height + height % 2, width + width % 2, channels), -np.inf)
    padded[:height, :width] = x
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, channels)
    return blocks.max(axis=(1, 3))


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) -> (height, width), bilinear with half-pixel centres, edges clamped."""

    def taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
        source = np.clip(source, 0, size_in - 1)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, size_in - 1)
        return low, high, source - low

    y0, y1, fy = taps(x.shape[0], height)
    x0, x1, fx = taps(x.shape[1], width)
    rows = x[y0] * (1 - fy)[:, None] + x[y1] * fy[:, None]  # (height, w)
    return rows[:, x0] * (1 - fx)[None, :] + rows[:, x1] * fx[None, :]


def hed_reference(image_rgb: np.ndarray, layers: dict) -> np.ndarray:
    """(H, W) edge probability of an (H, W, 3) RGB image, from ``read_h5_weights``' layers."""
    height, width = image_rgb.shape[:2]
    features = image_rgb[..., ::-1].astype(np.float64) - np.array(CAFFE_MEAN_BGR)  # BGR - mean
    sides = []
    for block, count in enumerate(BLOCK_CONVS, start=1):
        if block > 1:
            features = max_pool_same(features)
        for index in range(1, count + 1):
            features = np.maximum(conv_same(features, *layers[f"block{block}_conv{index}"]), 0)
        side = conv_same(features, *layers[f"dsn{block}"])[..., 0]
        sides.append(resize_bilinear(side, height, width))
    fused = conv_same(np.stack(sides, axis=-1), *layers["fuse"])[..., 0]
    return 1.0 / (1.0 + np.exp(-fused))
