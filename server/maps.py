"""A task's prediction at model size -> its map at the size the client asked, in bands of rows.

Definitions (docs/api.md): class maps take the argmax at model resolution and are resized with
nearest (a label never blends into another); probabilities and normals are resized bilinearly,
probabilities clipped to [0, 1], normals renormalised to unit length afterwards. Wire forms:
class ids as uint8, probabilities ``rint(v * 255)``, normals ``rint((n + 1) * 127.5)`` per
channel. ``server/resample.py`` computes them bit-identically to PIL, a band at a time, so a
camera-size map never exists as float32 planes: only the rows being encoded do.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from server import resample

BAND_PIXELS = 1 << 18
"""Output pixels per band: a normals band in float64 sums is 6 MB, inside the caches' reach."""


class Raster:
    """One task's map at ``width`` x ``height`` as ``dtype`` (uint8: the wire form; float32: the
    values, for normals the unit vectors), computed on demand one band of rows at a time."""

    def __init__(
        self, kind: str, prediction: np.ndarray, width: int, height: int, dtype=np.uint8
    ) -> None:
        self.kind, self.width, self.height = kind, width, height
        self.dtype = np.dtype(dtype)
        if kind == "classes" and self.dtype != np.uint8:
            raise ValueError("class maps are uint8 ids")
        model_height, model_width = prediction.shape[1:]  # (C, H, W)
        self._whole: np.ndarray | None = None
        if kind != "classes" and height < model_height:
            # A map reduced in height is at most the model's size: PIL itself computes it (it
            # orders its passes differently when reducing, so the bands would not be exact).
            self._whole = _pil_reference(kind, prediction, width, height, self.dtype)
            return
        self.rows_axis = resample.axis(model_height, height)
        columns = resample.axis(model_width, width)
        if kind == "classes":
            self._source = class_ids(prediction)  # (H, W) uint8
            self._columns = columns.nearest
        else:  # PIL's horizontal pass for every channel at model height: (C, H, width) float32
            planes = np.ascontiguousarray(prediction, dtype=np.float32)
            self._source = resample.horizontal_pass(planes, columns.bounds, columns.weights)

    @property
    def shape(self) -> tuple[int, ...]:
        planes = (3,) if self.kind == "vector" else ()
        return (self.height, self.width, *planes)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self._whole is not None:
            return self._whole[start:stop]
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        axis, as_uint8 = self.rows_axis, self.dtype == np.uint8
        if self.kind == "classes":
            resample.class_rows(self._source, axis.nearest, self._columns, start, out)
        elif self.kind == "probability":
            resample.probability_rows(self._source, axis.bounds, axis.weights, start, out, as_uint8)
        else:
            resample.vector_rows(self._source, axis.bounds, axis.weights, start, out, as_uint8)
        return out

    def bands(self, band_pixels: int = BAND_PIXELS) -> Iterator[np.ndarray]:
        """The whole map, top to bottom, ``band_pixels`` pixels (at least one row) at a time."""
        step = max(1, band_pixels // max(self.width, 1))
        for start in range(0, self.height, step):
            yield self.rows(start, min(start + step, self.height))

    def array(self) -> np.ndarray:
        return self.rows(0, self.height)


def compile_kernels() -> None:
    """Every map kernel once, for each kind and output type (compiled, or loaded from numba's
    cache): the server's warm-up runs it, and so does the image build (Dockerfile), which keeps
    what numba compiled in its cache directory for the containers to load."""
    for kind, channels in (("classes", 2), ("probability", 1), ("vector", 3)):
        prediction = np.zeros((channels, 2, 2), np.float32)
        for dtype in (np.uint8,) if kind == "classes" else (np.uint8, np.float32):
            Raster(kind, prediction, 3, 3, dtype).array()


def restore_size(kind: str, prediction: np.ndarray, width: int, height: int) -> np.ndarray:
    """A stream's prediction (C, H, W) -> its values at ``width`` x ``height``: uint8 ids
    (classes), float32 [0, 1] (probability) or float32 unit vectors (h, w, 3) (vector)."""
    dtype = np.uint8 if kind == "classes" else np.float32
    return Raster(kind, prediction, width, height, dtype).array()


def _pil_reference(
    kind: str, prediction: np.ndarray, width: int, height: int, dtype: np.dtype
) -> np.ndarray:
    """The definitions run by PIL and NumPy on whole float32 planes (small maps only)."""
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for plane in prediction
    ]
    values = np.clip(planes[0], 0.0, 1.0) if kind == "probability" else unit_vectors(planes)
    return to_uint8(kind, values) if dtype == np.uint8 else values


def unit_vectors(channels: list[np.ndarray]) -> np.ndarray:
    """Three (h, w) planes -> (h, w, 3) float32 unit vectors (norms at least 1e-6)."""
    x, y, z = channels
    norms = x * x  # summed in x, y, z order, as the bands do
    norms += y * y
    norms += z * z
    np.sqrt(norms, out=norms)
    np.maximum(norms, np.float32(1e-6), out=norms)
    return np.stack([plane / norms for plane in channels], axis=-1)


def class_ids(logits: np.ndarray) -> np.ndarray:
    """(C, H, W) logits -> uint8 (H, W) argmax, the first class winning ties, like ``argmax``.

    ``argmax(axis=0)`` walks the class axis with a stride of a whole plane; comparing whole
    planes class after class is contiguous. (Only NaN logits, which no exported model emits,
    would be ranked differently.)
    """
    best = logits[0].copy()  # (H, W)
    ids = np.zeros(best.shape, np.uint8)
    for index in range(1, logits.shape[0]):
        higher = logits[index] > best
        ids[higher] = index
        np.maximum(best, logits[index], out=best)
    return ids


def to_uint8(kind: str, values: np.ndarray) -> np.ndarray:
    """Values (``restore_size``) -> the uint8 wire form, by its definition in NumPy (the bands
    compute the same numbers; tests/server/test_render.py checks both)."""
    if kind == "classes":
        return values.astype(np.uint8)
    if kind == "probability":
        scaled = values * np.float32(255.0)
    else:  # the same float32 steps as round((clip(n) + 1) * 127.5), in one scratch array
        scaled = np.clip(values, -1.0, 1.0)
        scaled += np.float32(1.0)
        scaled *= np.float32(127.5)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def heat_colours() -> np.ndarray:
    """(256, 3) uint8 ramp for probabilities: black -> red -> yellow -> white."""
    v = np.linspace(0.0, 1.0, 256)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], 1)
    return np.rint(rgb * 255).astype(np.uint8)


def colourise(kind: str, wire: np.ndarray, palette: tuple | None) -> np.ndarray:
    """uint8 wire map -> RGB uint8 (h, w, 3) for people to look at."""
    if kind == "classes":
        colours = np.zeros((256, 3), np.uint8)
        colours[: len(palette)] = np.asarray(palette, np.uint8)
        return colours[wire]
    if kind == "probability":
        return heat_colours()[wire]
    return wire  # normals are already RGB-encoded


def overlay(rgb: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """Blend ``colour`` over the image: ``alpha`` 0 shows the image, 1 the map only."""
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.rint(blended).astype(np.uint8)
