"""The fast paths of post-processing give exactly what the plain definitions give: the PNG
encoder (any reader decodes the same pixels), full-size unit normals, the uint8 wire forms,
and the session options that keep ORT's threads from spinning."""

from __future__ import annotations

import asyncio
import io
import typing
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from server import render
from server.batching import JobResult
from server.codecs import encode_npz, encode_png, open_upload
from server.maps import class_ids, restore_size, to_uint8
from server.modeldir import load_model_dir
from server.pipeline import MapRequest, Pipeline, Prediction, preprocess
from server.runtime import SPIN_CONFIG, ModelRuntime
from server.settings import Settings
from tests.server.conftest import decoded, image_bytes


def smooth_map(height: int, width: int, channels: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / max(height, width, 1)
    planes = [np.sin(5 * x + c) * np.cos(3 * y - c) for c in range(max(channels, 1))]
    values = np.rint((np.stack(planes, -1) + 1) * 127.5).astype(np.uint8)
    return values if channels else values[..., 0]


SHAPES = [(1, 1), (1, 7), (9, 1), (33, 57), (48, 64, 3), (1, 1, 3), (5, 2, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("level", [0, 1, 2, 3, 4, 9])  # 1-3: ISA-L; 0, 4-9: zlib
def test_png_decodes_to_the_same_pixels(shape, level):
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    for pixels in (rng.integers(0, 256, shape, dtype=np.uint8), smooth_map(*shape)):
        image = Image.open(io.BytesIO(encode_png(pixels, level)))
        assert image.mode == ("L" if pixels.ndim == 2 else "RGB")
        assert np.array_equal(np.asarray(image), pixels)


def test_png_of_a_strided_view_and_of_a_smooth_map():
    pixels = smooth_map(40, 60, channels=3)[:, ::2]  # not contiguous
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(pixels, 1)))), pixels)
    smooth = smooth_map(256, 256)
    assert len(encode_png(smooth, 1)) < smooth.size // 4  # the Up filter makes it compress


@pytest.mark.parametrize("shape", [(128, 128), (97, 203), (480, 640), (1, 1)])
def test_preprocess_equals_the_per_pixel_definition(shape):
    """The lookup-table normalisation gives the same float32 values as computing
    ``(resized / 255 - mean) / std`` for every pixel."""
    model = SimpleNamespace(
        height=128, width=128, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    rgb = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    resized = Image.fromarray(rgb).resize((128, 128), Image.Resampling.BILINEAR)
    scaled = np.asarray(resized, dtype=np.float32) / 255.0  # (H, W, 3)
    mean, std = np.asarray(model.mean, np.float32), np.asarray(model.std, np.float32)
    expected = ((scaled - mean) / std).transpose(2, 0, 1)  # (3, H, W)
    got = preprocess(rgb, model)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, expected)


def test_class_ids_equal_argmax_ties_included():
    rng = np.random.default_rng(2)
    logits = rng.integers(-2, 3, (7, 30, 20)).astype(np.float32)  # many exact ties
    logits[:, 0, 0] = 1.0  # all classes tied: class 0
    ids = class_ids(logits)
    assert ids.dtype == np.uint8 and np.array_equal(ids, logits.argmax(axis=0))
    assert ids[0, 0] == 0
    single = class_ids(logits[:1])
    assert np.array_equal(single, np.zeros((30, 20), np.uint8))


def reference_unit_vectors(prediction: np.ndarray, width: int, height: int) -> np.ndarray:
    """The definition: resize each channel bilinearly, stack, divide by the norm."""
    channels = [
        np.asarray(Image.fromarray(c).resize((width, height), Image.Resampling.BILINEAR))
        for c in prediction
    ]
    vectors = np.stack(channels, axis=-1)  # (h, w, 3)
    norms = np.sqrt(np.einsum("hwc,hwc->hw", vectors, vectors))[..., None]
    return vectors / np.maximum(norms, np.float32(1e-6))


@pytest.mark.parametrize("size", [(32, 32), (57, 33), (640, 480)])
def test_normals_are_bit_identical_to_the_definition(size):
    prediction = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    prediction[:, 0, 0] = 0.0  # a zero vector stays finite
    restored = restore_size("vector", prediction, *size)
    assert restored.dtype == np.float32 and restored.shape == (size[1], size[0], 3)
    assert np.array_equal(restored, reference_unit_vectors(prediction, *size))
    assert np.all(np.isfinite(restored))


def test_wire_forms_are_rounded_scaled_values():
    values = np.random.default_rng(1).uniform(-1.2, 1.2, (50, 40, 3)).astype(np.float32)
    expected = np.rint((np.clip(values, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    assert np.array_equal(to_uint8("vector", values), expected)
    probabilities = np.abs(values[..., 0]) / 1.2
    expected = np.rint(probabilities * 255.0).astype(np.uint8)
    assert np.array_equal(to_uint8("probability", probabilities), expected)
    before = values.copy()
    to_uint8("vector", values)
    assert np.array_equal(values, before)  # the caller's map is left alone


@pytest.mark.parametrize("spin", sorted(SPIN_CONFIG))
def test_ort_spin_wait_is_a_choice(model_dir, spin):
    runtime = ModelRuntime(load_model_dir(model_dir), ["CPUExecutionProvider"], 1, spin=spin)
    options = runtime.session.get_session_options()
    keys = ("session.intra_op.spin_duration_us", "session.intra_op.allow_spinning")
    expected = {"brief": ("100", None), "always": (None, None), "never": (None, "0")}[spin]
    for key, value in zip(keys, expected, strict=True):
        if value is None:  # ORT's default: the entry is absent
            with pytest.raises(Exception, match="does not have configuration"):
                options.get_session_config_entry(key)
        else:
            assert options.get_session_config_entry(key) == value


def test_every_spin_mode_is_a_setting():
    annotation = Settings.model_fields["ort_spin"].annotation
    assert set(typing.get_args(annotation)) == set(SPIN_CONFIG)


def prediction_for(model, maps, width, height, request=None) -> Prediction:
    """A ``Prediction`` of given maps for an upload of ``width`` x ``height``, outside a server."""
    upload = open_upload(image_bytes(np.zeros((height, width, 3), np.uint8)), 10**8)
    request = request or MapRequest(tuple(model.tasks))
    plan = Pipeline(model, None, None, 10**8).plan(upload, request)
    return Prediction(plan, JobResult(maps, {}, {}, 0.0, 0.0, 1), None, None, {})


def random_maps(model, seed=3):
    rng = np.random.default_rng(seed)
    return {t.name: rng.normal(size=(t.channels, 32, 32)).astype(np.float32) for t in model.tasks}


def test_in_turn_or_one_job_per_task_render_the_same(model_dir, monkeypatch):
    model = load_model_dir(model_dir)
    prediction = prediction_for(model, random_maps(model), 70, 45)

    def encoded():
        work = lambda task: render.task_json(prediction, task, render.Look())  # noqa: E731
        with ThreadPoolExecutor(2) as pool:
            return asyncio.run(render.each_task(pool, prediction, model.tasks, work))

    monkeypatch.setattr(render, "PARALLEL_FROM_PIXELS", 10**9)
    together = encoded()
    monkeypatch.setattr(render, "PARALLEL_FROM_PIXELS", 0)
    apart = encoded()
    assert list(apart) == list(model.task_names)  # request order, not cost order
    assert decoded(together) == decoded(apart)


@pytest.mark.parametrize("normals", [np.float32, np.uint8])
def test_streamed_npz_holds_the_whole_arrays(model_dir, monkeypatch, normals):
    """Band by band into a zip with data descriptors: ``numpy.load`` reads the same arrays as
    from one ``np.savez`` of the whole maps."""
    model = load_model_dir(model_dir)
    maps = random_maps(model, seed=4)
    request = MapRequest(tuple(model.tasks), dtypes={"normals": np.dtype(normals)})
    prediction = prediction_for(model, maps, 57, 91, request)
    monkeypatch.setattr("server.maps.BAND_PIXELS", 57 * 7)  # 13 bands of 7 rows
    streamed = np.load(
        io.BytesIO(b"".join(render.npz_chunks(model, prediction, model.tasks, False)))
    )
    whole = {}
    for task in model.tasks:
        values = restore_size(task.kind, maps[task.name], 57, 91)
        keep_float = task.kind == "vector" and normals == np.float32
        whole[task.name] = values if keep_float else to_uint8(task.kind, values)
    expected = np.load(io.BytesIO(encode_npz(whole)))
    assert sorted(streamed.files) == sorted(expected.files) == sorted(model.task_names)
    for name in model.task_names:
        assert streamed[name].dtype == expected[name].dtype
        assert np.array_equal(streamed[name], expected[name])
