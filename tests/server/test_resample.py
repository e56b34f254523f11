"""The map kernels (server/resample.py, through ``maps.Raster``) give exactly PIL's and NumPy's
numbers: every kind, both dtypes, many random sizes up and down, any banding."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from server import maps, resample
from server.maps import Raster, class_ids

KINDS = {"classes": 6, "probability": 1, "vector": 3}  # kind -> channels


def random_sizes(count: int, seed: int) -> list[tuple[int, int, int, int]]:
    """(model width, model height, map width, map height): mostly larger maps (up to 9x, the
    server's usual case), some smaller along one or both axes, some equal, some of 1 pixel."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(count):
        model_width, model_height = (int(v) for v in rng.integers(1, 24, 2))
        factors = rng.choice([0.3, 0.7, 1.0, 1.6, 3.3, 9.1], 2) * rng.uniform(0.8, 1.25, 2)
        width, height = (
            max(1, round(s * f)) for s, f in zip((model_width, model_height), factors, strict=True)
        )
        sizes.append((model_width, model_height, width, height))
    return sizes + [(1, 1, 5, 3), (7, 5, 1, 1), (3, 4, 3, 4), (16, 12, 1200, 37)]


def prediction(kind: str, width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(KINDS[kind], height, width)).astype(np.float32)
    if kind == "probability":  # around [0, 1], some outside (the kernels clip after resizing)
        values = (values * np.float32(0.4) + np.float32(0.5)).astype(np.float32)
    if kind == "vector":
        values[:, 0, 0] = 0.0  # a zero vector: the norm's floor
    if kind == "classes":
        values = np.rint(values)  # ties between classes
    return values


def definition(kind: str, values: np.ndarray, width: int, height: int, dtype) -> np.ndarray:
    """What ``/predict`` has always answered: PIL on whole planes, then NumPy."""
    if kind == "classes":
        ids = Image.fromarray(class_ids(values)).resize((width, height), Image.Resampling.NEAREST)
        return np.asarray(ids)
    planes = [
        np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.BILINEAR))
        for p in values
    ]
    if kind == "probability":
        result = np.clip(planes[0], 0.0, 1.0)
    else:
        x, y, z = planes
        norms = np.maximum(np.sqrt(x * x + y * y + z * z), np.float32(1e-6))
        result = np.stack([p / norms for p in planes], axis=-1)
    return maps.to_uint8(kind, result) if dtype == np.uint8 else result


@pytest.mark.parametrize(
    ("kind", "dtype"),
    [
        ("classes", np.uint8),
        ("probability", np.uint8),
        ("probability", np.float32),
        ("vector", np.uint8),
        ("vector", np.float32),
    ],
)
def test_rasters_equal_the_definition_at_random_sizes(kind, dtype):
    for index, (model_width, model_height, width, height) in enumerate(random_sizes(40, 7)):
        values = prediction(kind, model_width, model_height, seed=index)
        raster = Raster(kind, values, width, height, dtype)
        expected = definition(kind, values, width, height, dtype)
        got = raster.array()
        assert got.shape == expected.shape == raster.shape and got.dtype == np.dtype(dtype)
        assert np.array_equal(got, expected), (model_width, model_height, width, height)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bands_of_any_height_make_the_same_map(kind):
    values = prediction(kind, 13, 11, seed=5)
    raster = Raster(kind, values, 2 * resample.CHUNK + 37, 29)  # columns past two chunks
    whole = raster.array()
    for band_pixels in (1, raster.width * 3, raster.width * 7 + 5, 10**9):
        assert np.array_equal(np.concatenate(list(raster.bands(band_pixels))), whole)


def test_axis_coefficients_are_pils_at_the_edges():
    """A 1-pixel source repeats; one tap per output when the sizes are equal."""
    bounds, weights = resample.bilinear_coefficients(1, 4)
    assert bounds.tolist() == [[0, 1]] * 4 and np.all(weights[:, 0] == 1.0)
    bounds, weights = resample.bilinear_coefficients(5, 5)
    assert np.all(weights[np.arange(5), 0] == 1.0) and np.all(weights[:, 1:] == 0.0)
    assert resample.nearest_indices(3, 7).tolist() == [0, 0, 1, 1, 1, 2, 2]  # 3/7 steps from 3/14


# Run in a fresh interpreter: numba chooses where to cache when the module is imported.
UNCACHED_RUN = """
import logging, sys
import numpy as np
logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
from server import maps, resample
values = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 4)
np.save(sys.argv[1], maps.Raster("probability", values, 9, 7).array())
print("cache:", resample._JIT["cache"])
"""


def test_kernels_compile_where_numba_cannot_cache(tmp_path):
    """With no writable cache directory (the image's user, which owns neither site-packages nor
    a home, without NUMBA_CACHE_DIR) numba would refuse at import; the kernels are compiled at
    every start instead, give the same map, and the log says why. numba is limited here to
    NUMBA_CACHE_DIR, which points where nobody can write (root included)."""
    env = os.environ | {
        "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator",
        "NUMBA_CACHE_DIR": "/proc/ase-no-cache",
    }
    out = tmp_path / "map.npy"
    command = [sys.executable, "-c", UNCACHED_RUN, str(out)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cache: False" in run.stdout
    assert "WARNING server.resample: cannot cache function" in run.stdout
    assert "NUMBA_CACHE_DIR" in run.stdout
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 4)
    assert np.array_equal(np.load(out), Raster("probability", values, 9, 7).array())
