"""Maps from model size to any size, a band of rows at a time, bit-identical to PIL.

The definitions (what ``/predict`` has always answered): class maps take the argmax at model
size and are resized with PIL's NEAREST; probabilities and normals are resized channel by
channel with PIL's BILINEAR on float32 ("F") images, probabilities clipped to [0, 1], normals
divided by their float32 norm; the uint8 wire forms round ``v * 255`` and ``(n + 1) * 127.5``.

PIL computes a whole float32 image per channel (12 bytes a pixel for normals, then as many for
the unit vectors: 0.9 GB for one 39-megapixel map) in a second per 12-MP normals map. Here the
same arithmetic runs in compiled loops (numba, GIL released) that write only the rows asked
for, in the final form: PIL's filter coefficients in float64, its horizontal pass at model
height (small), then its vertical pass, clip, norm and rounding fused per pixel. The float
steps are PIL's and NumPy's own, in their order, so every value is equal, not close
(tests/server/test_resample.py holds them to ``array_equal`` against PIL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

KINDS = ("classes", "probability", "vector")
_JIT = {"nogil": True, "cache": True}


@dataclass(frozen=True)
class Axis:
    """How one axis of a PIL resize reads its input: for each output index, the first input
    index and the number of taps (``bounds``, int64 (n, 2)) and the tap weights (``weights``,
    float64 (n, taps)) of the bilinear filter; for NEAREST, one input index each (``nearest``)."""

    bounds: np.ndarray
    weights: np.ndarray
    nearest: np.ndarray


def axis(in_size: int, out_size: int) -> Axis:
    bounds, weights = bilinear_coefficients(in_size, out_size)
    return Axis(bounds, weights, nearest_indices(in_size, out_size))


def bilinear_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's ``precompute_coeffs`` for the bilinear (triangle) filter, in the same float64 steps:
    the filter widens by the scale when reducing, taps are clipped to the image and
    renormalised (so the border repeats its edge pixel)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the triangle filter's support is 1
    taps = int(math.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int64)
    weights = np.zeros((out_size, taps), np.float64)
    _fill_bilinear(in_size, scale, filterscale, support, bounds, weights)
    return bounds, weights


@numba.njit(**_JIT)
def _fill_bilinear(in_size, scale, filterscale, support, bounds, weights):  # pragma: no cover
    inverse = 1.0 / filterscale
    for out in range(bounds.shape[0]):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - first
        total = 0.0
        for tap in range(count):
            distance = abs((tap + first - center + 0.5) * inverse)
            weight = 1.0 - distance if distance < 1.0 else 0.0
            weights[out, tap] = weight
            total += weight
        if total != 0.0:
            for tap in range(count):
                weights[out, tap] /= total
        bounds[out, 0], bounds[out, 1] = first, count


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """PIL's NEAREST resize (``ImagingScaleAffine``): the source position starts at half a step
    and grows by repeated float64 addition of the step, truncated to an index."""
    return _nearest(float(in_size) / out_size, in_size, out_size)


@numba.njit(**_JIT)
def _nearest(step, in_size, out_size):  # pragma: no cover
    indices = np.empty(out_size, np.int64)
    position = step * 0.5
    for out in range(out_size):
        indices[out] = min(int(position), in_size - 1)
        position += step
    return indices


@numba.njit(**_JIT)
def horizontal_pass(plane, bounds, weights):  # pragma: no cover
    """(H, W) float32 -> (H, w) float32: PIL's first pass (float64 sums, stored as float32)."""
    out = np.empty((plane.shape[0], bounds.shape[0]), np.float32)
    for row in range(plane.shape[0]):
        for column in range(bounds.shape[0]):
            first, count = bounds[column, 0], bounds[column, 1]
            total = 0.0
            for tap in range(count):
                total += plane[row, first + tap] * weights[column, tap]
            out[row, column] = total
    return out


CHUNK = 512
"""Columns handled at once: the float64 sums of three channels stay in the L1 cache."""


@numba.njit(**_JIT)
def _vertical_sums(planes, bounds, weights, row, first_column, sums):  # pragma: no cover
    """PIL's second pass for one output row, columns ``first_column:+len``, every plane:
    float64 sums, tap after tap, into ``sums`` (planes, len)."""
    first, count = bounds[row, 0], bounds[row, 1]
    width = sums.shape[1]
    sums[:] = 0.0
    for tap in range(count):
        weight = weights[row, tap]
        for plane in range(planes.shape[0]):
            source = planes[plane, first + tap, first_column : first_column + width]
            target = sums[plane]
            for column in range(width):
                target[column] += source[column] * weight


@numba.njit(**_JIT)
def probability_rows(plane, bounds, weights, start, out, as_uint8):  # pragma: no cover
    """Rows ``start:start + len(out)`` of a probability map (``plane``: the horizontal pass, (1,
    H, w)): bilinear, clipped to [0, 1]; uint8 ``rint(v * 255)`` or float32."""
    width = plane.shape[2]
    sums = np.empty((1, CHUNK), np.float64)
    zero, one, full = np.float32(0.0), np.float32(1.0), np.float32(255.0)
    for offset in range(out.shape[0]):
        for first in range(0, width, CHUNK):
            count = min(CHUNK, width - first)
            chunk = sums[:, :count]
            _vertical_sums(plane, bounds, weights, start + offset, first, chunk)
            target = out[offset, first : first + count]
            for column in range(count):
                value = min(max(np.float32(chunk[0, column]), zero), one)
                if as_uint8:
                    target[column] = np.uint8(np.rint(value * full))
                else:
                    target[column] = value


@numba.njit(**_JIT)
def vector_rows(planes, bounds, weights, start, out, as_uint8):  # pragma: no cover
    """Rows of a normals map (``planes``: (3, H, w)): bilinear per channel, divided by the float32
    norm (x*x + y*y + z*z in that order, at least 1e-6); uint8 ``rint((clip(n) + 1) * 127.5)``
    or float32 unit vectors. Computed per channel in contiguous buffers (so that the loops run
    in SIMD registers), then interleaved into the (rows, w, 3) output."""
    width = planes.shape[2]
    sums = np.empty((3, CHUNK), np.float64)
    units = np.empty((3, CHUNK), np.float32)
    smallest, one, half = np.float32(1e-6), np.float32(1.0), np.float32(127.5)
    for offset in range(out.shape[0]):
        for first in range(0, width, CHUNK):
            count = min(CHUNK, width - first)
            _vertical_sums(planes, bounds, weights, start + offset, first, sums[:, :count])
            for column in range(count):
                x = np.float32(sums[0, column])
                y = np.float32(sums[1, column])
                z = np.float32(sums[2, column])
                norm = max(np.sqrt(x * x + y * y + z * z), smallest)
                units[0, column] = x / norm
                units[1, column] = y / norm
                units[2, column] = z / norm
            if as_uint8:
                for channel in range(3):
                    for column in range(count):
                        clipped = min(max(units[channel, column], -one), one)
                        units[channel, column] = np.rint((clipped + one) * half)
            target = out[offset, first : first + count]
            for column in range(count):
                for channel in range(3):
                    target[column, channel] = units[channel, column]


@numba.njit(**_JIT)
def class_rows(ids, rows, columns, start, out):  # pragma: no cover
    """Rows of a NEAREST-resized class map: ``out[r, c] = ids[rows[start + r], columns[c]]``."""
    for offset in range(out.shape[0]):
        source = ids[rows[start + offset]]
        for column in range(out.shape[1]):
            out[offset, column] = source[columns[column]]
