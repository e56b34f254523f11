"""Maps from model size to any size, a band of rows at a time, bit-identical to PIL.

The definitions (what ``/predict`` has always answered): class maps take the argmax at model
size and are resized with PIL's NEAREST; probabilities and normals are resized channel by
channel with PIL's BILINEAR on float32 ("F") images, probabilities clipped to [0, 1], normals
divided by their float32 norm; the uint8 wire forms round ``v * 255`` and ``(n + 1) * 127.5``.

PIL computes a whole float32 image per channel (12 bytes a pixel for normals, then as many for
the unit vectors: 0.9 GB for one 39-megapixel map), and it and NumPy take half a second of CPU
for a 12-MP normals map. Here the same arithmetic runs in compiled loops (numba, GIL released)
that write only the rows asked for, in the final form: PIL's filter coefficients in float64,
its horizontal pass at model height (small), then per output row its vertical pass, clip, norm
and rounding, each step one loop over contiguous buffers so that it runs in SIMD registers
(13-16 times less CPU than PIL and NumPy for 12- and 39-MP probabilities and normals:
docs/benchmarks.md, camera-size images). The float steps are PIL's and NumPy's own, in their
order, so every value is equal, not close (tests/server/test_resample.py holds them to
``array_equal`` against PIL).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numba
import numpy as np

KINDS = ("classes", "probability", "vector")
log = logging.getLogger(__name__)


def _cache_probe():  # pragma: no cover (never called: decorating it is the check)
    return 0


def jit_options() -> dict:
    """numba's options for every kernel. error_model "numpy": a float division by zero gives inf
    or nan as in NumPy, where Python's model branches to raise ZeroDivisionError, which keeps
    loops from running in SIMD registers. cache: numba keeps what it compiles in
    NUMBA_CACHE_DIR, else next to this file (__pycache__), else in the user's cache directory,
    and raises at decoration when none is writable (a non-root user, a read-only filesystem);
    then the kernels are compiled at every start instead, which only delays readiness. The
    image points NUMBA_CACHE_DIR at /tmp, writable wherever it runs (Dockerfile)."""
    options = {"nogil": True, "cache": True, "error_model": "numpy"}
    try:
        numba.njit(**options)(_cache_probe)
    except RuntimeError as error:  # "cannot cache function ...: no locator available ..."
        log.warning("%s: compiling the map kernels at every start (NUMBA_CACHE_DIR)", error)
        options["cache"] = False
    return options


_JIT = jit_options()


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
def horizontal_pass(planes, bounds, weights):  # pragma: no cover
    """(C, H, W) float32 -> (C, H, w) float32: PIL's first pass (float64 sums, stored as
    float32). Every column is first computed as two taps without a loop over taps (what every
    enlargement has), then the columns with another number of taps are computed again."""
    channels, height, width = planes.shape[0], planes.shape[1], bounds.shape[0]
    first, second = bounds[:, 0].copy(), np.minimum(bounds[:, 0] + 1, planes.shape[2] - 1)
    w0 = weights[:, 0].copy()
    w1 = weights[:, 1].copy() if weights.shape[1] > 1 else np.zeros(width)
    others = np.nonzero(bounds[:, 1] != 2)[0]
    out = np.empty((channels, height, width), np.float32)
    for channel in range(channels):
        for row in range(height):
            source, target = planes[channel, row], out[channel, row]
            for column in range(width):
                target[column] = np.float32(
                    (0.0 + source[first[column]] * w0[column]) + source[second[column]] * w1[column]
                )
            for column in others:
                total = 0.0
                for tap in range(bounds[column, 1]):
                    total += source[first[column] + tap] * weights[column, tap]
                target[column] = total
    return out


CHUNK = 1024
"""Columns handled at once: a row's intermediate values stay in the L1 cache."""


@numba.njit(**_JIT)
def tap_sums(plane, first, count, weights, first_column, out):  # pragma: no cover
    """PIL's pass along the rows of ``plane`` (H, W) for one output line: ``out[c]`` = float32
    of the float64 sum, tap after tap from 0.0, of ``plane[first + t, first_column + c] *
    weights[t]``. One and two taps (every enlargement) get loops of their own."""
    width = out.shape[0]
    if count == 1:
        weight, source = weights[0], plane[first, first_column : first_column + width]
        for column in range(width):
            out[column] = np.float32(0.0 + source[column] * weight)
    elif count == 2:
        w0, w1 = weights[0], weights[1]
        a0 = plane[first, first_column : first_column + width]
        a1 = plane[first + 1, first_column : first_column + width]
        for column in range(width):
            out[column] = np.float32((0.0 + a0[column] * w0) + a1[column] * w1)
    else:
        sums = np.zeros(width, np.float64)
        for tap in range(count):
            weight, source = weights[tap], plane[first + tap, first_column : first_column + width]
            for column in range(width):
                sums[column] += source[column] * weight
        for column in range(width):
            out[column] = np.float32(sums[column])


@numba.njit(**_JIT)
def probability_rows(plane, bounds, weights, start, out, as_uint8):  # pragma: no cover
    """Rows ``start:start + len(out)`` of a probability map (``plane``: the horizontal pass, (1,
    H, w)): bilinear, clipped to [0, 1]; uint8 ``rint(v * 255)`` or float32."""
    width = plane.shape[2]
    values = np.empty(CHUNK, np.float32)
    zero, one, full = np.float32(0.0), np.float32(1.0), np.float32(255.0)
    for offset in range(out.shape[0]):
        row = start + offset
        for first in range(0, width, CHUNK):
            count = min(CHUNK, width - first)
            chunk = values[:count]
            tap_sums(plane[0], bounds[row, 0], bounds[row, 1], weights[row], first, chunk)
            target = out[offset, first : first + count]
            if as_uint8:
                for column in range(count):
                    target[column] = np.uint8(np.rint(min(max(chunk[column], zero), one) * full))
            else:
                for column in range(count):
                    target[column] = min(max(chunk[column], zero), one)


@numba.njit(**_JIT)
def vector_rows(planes, bounds, weights, start, out, as_uint8):  # pragma: no cover
    """Rows of a normals map (``planes``: (3, H, w)): bilinear per channel, divided by the float32
    norm (x*x + y*y + z*z in that order, at least 1e-6); uint8 ``rint((clip(n) + 1) * 127.5)``
    or float32 unit vectors. Each step is its own loop over contiguous per-channel buffers (so
    that it runs in SIMD registers); the last interleaves them into the (rows, w, 3) output."""
    width = planes.shape[2]
    values = np.empty((4, CHUNK), np.float32)  # x, y, z, then the norms
    wire = np.empty((3, CHUNK), np.uint8)
    flat = out.reshape(out.shape[0], -1)  # (rows, w * 3)
    for offset in range(out.shape[0]):
        row = start + offset
        first_tap, taps = bounds[row, 0], bounds[row, 1]
        for first in range(0, width, CHUNK):
            count = min(CHUNK, width - first)
            for channel in range(3):
                chunk = values[channel, :count]
                tap_sums(planes[channel], first_tap, taps, weights[row], first, chunk)
            _norms(values[0], values[1], values[2], values[3, :count])
            target = flat[offset, 3 * first : 3 * (first + count)]
            if as_uint8:
                for channel in range(3):
                    _normal_wire(values[channel], values[3], wire[channel, :count])
                _interleave(wire, target)
            else:
                for channel in range(3):
                    _divide(values[channel, :count], values[3])
                _interleave(values, target)


@numba.njit(**_JIT)
def _norms(x, y, z, out):  # pragma: no cover
    smallest = np.float32(1e-6)
    for column in range(out.shape[0]):
        out[column] = max(
            np.sqrt(x[column] * x[column] + y[column] * y[column] + z[column] * z[column]), smallest
        )


@numba.njit(**_JIT)
def _normal_wire(values, norms, out):  # pragma: no cover
    one, half = np.float32(1.0), np.float32(127.5)
    for column in range(out.shape[0]):
        unit = values[column] / norms[column]
        out[column] = np.uint8(np.rint((min(max(unit, -one), one) + one) * half))


@numba.njit(**_JIT)
def _divide(values, norms):  # pragma: no cover
    for column in range(values.shape[0]):
        values[column] /= norms[column]


@numba.njit(**_JIT)
def _interleave(channels, out):  # pragma: no cover
    """(3, >= n) -> (n * 3,) of the same dtype: x0 y0 z0 x1 y1 z1 ..."""
    for column in range(out.shape[0] // 3):
        out[3 * column] = channels[0, column]
        out[3 * column + 1] = channels[1, column]
        out[3 * column + 2] = channels[2, column]


@numba.njit(**_JIT)
def class_rows(ids, rows, columns, start, out):  # pragma: no cover
    """Rows of a NEAREST-resized class map: ``out[r, c] = ids[rows[start + r], columns[c]]``.
    An enlarged map repeats each source row: a repeat is copied from the row above."""
    for offset in range(out.shape[0]):
        if offset > 0 and rows[start + offset] == rows[start + offset - 1]:
            out[offset] = out[offset - 1]
            continue
        source = ids[rows[start + offset]]
        for column in range(out.shape[1]):
            out[offset, column] = source[columns[column]]
