"""Decoding, post-processing and the exported model, without a server."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from server import pipeline
from server.codecs import decode_image, open_upload, to_rgb
from server.errors import TooLarge
from server.maps import colourise, overlay, restore_size, to_uint8
from server.modeldir import load_model_dir
from tests.server.conftest import image_bytes, random_image


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = np.array([[0, 257 * 100, 65535]], np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(grey)))
    assert rgb[0, :, 0].tolist() == [0, 100, 255] and rgb.shape == (1, 3, 3)


def test_transparency_is_laid_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgb = decode_image(image_bytes(rgba), 100)
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[1, 1].tolist() == [255, 255, 255]


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(TooLarge) as caught:
        decode_image(image_bytes(random_image(0, 40, 50)), 40 * 50 - 1)
    assert caught.value.code == "image_too_large" and "2000" in caught.value.message


def test_only_small_baseline_jpegs_are_decoded_on_the_event_loop():
    """Every other upload is opened and decoded in a thread: a PNG's header can inflate text
    chunks, a progressive JPEG can hold any number of scans, large images take long."""
    small = random_image(1, 128, 128)

    def on_loop(body: bytes) -> bool:
        if not pipeline.opens_on_the_loop(body):
            return False
        return pipeline.decodes_on_the_loop(open_upload(body, 10**8), scale=1)

    assert on_loop(image_bytes(small, "JPEG", quality=90))
    assert not on_loop(image_bytes(small, "JPEG", quality=90, progressive=True))
    assert not on_loop(image_bytes(small, "PNG"))
    assert not on_loop(image_bytes(random_image(2, 300, 300), "JPEG"))  # 90,000 pixels
    padded = image_bytes(small, "JPEG") + bytes(pipeline.INLINE_DECODE_BYTES)  # trailing bytes
    assert not on_loop(padded)  # a long body, even of a small picture
    assert not pipeline.opens_on_the_loop(padded)


def test_class_maps_take_argmax_then_nearest():
    logits = np.zeros((3, 2, 2), np.float32)
    logits[2, 0, 0] = logits[1, 1, 1] = 5.0  # (C, H, W)
    ids = restore_size("classes", logits, 4, 4)
    assert ids.dtype == np.uint8 and ids.shape == (4, 4)
    assert ids[:2, :2].tolist() == [[2, 2], [2, 2]] and ids[2:, 2:].tolist() == [[1, 1], [1, 1]]


def test_probabilities_and_normals_resize_bilinearly():
    probability = restore_size("probability", np.array([[[0.0, 1.0]]], np.float32), 8, 3)
    assert probability.shape == (3, 8) and 0 < probability[0, 4] < 1
    assert np.all(np.diff(probability[0]) >= 0)  # a ramp, not steps of 0 and 1
    normals = np.stack([np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.zeros((1, 2))])
    restored = restore_size("vector", normals.astype(np.float32), 6, 2)  # (h, w, 3)
    assert restored.shape == (2, 6, 3)
    assert np.allclose(np.linalg.norm(restored, axis=-1), 1.0, atol=1e-5)


def test_wire_encodings_and_colours():
    assert to_uint8("probability", np.array([0.0, 0.5, 1.0])).tolist() == [0, 128, 255]
    assert to_uint8("vector", np.array([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]
    palette = ((0, 0, 0), (200, 10, 20))
    coloured = colourise("classes", np.array([[1, 0]], np.uint8), palette)
    assert coloured.tolist() == [[[200, 10, 20], [0, 0, 0]]]
    image = np.full((1, 2, 3), 100, np.uint8)
    assert overlay(image, coloured, 0.0).tolist() == image.tolist()


def test_model_routes_different_images_differently(model_dir):
    model = load_model_dir(model_dir)
    session = ort.InferenceSession(str(model.graphs["dense"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1.5, (2, 3, 32, 32)).astype(np.float32)
    feeds = {
        "images": images,
        "stream_image": np.array([0, 1, 0], np.int64),
        "stream_task": np.array([4, 4, 0], np.int64),
    }
    outputs = dict(zip(model.outputs, session.run(None, feeds), strict=True))
    assert outputs["edges"].shape == (2, 1, 32, 32) and outputs["semseg"].shape == (1, 6, 32, 32)
    assert outputs["parts"].shape[0] == 0  # nobody asked for parts: its head ran on no stream
    tokens = outputs["expert_tokens"]  # (S, L, N)
    assert tokens.shape == (3, 2, 16) and np.all(tokens.sum(-1) == 16 * 4)
    assert not np.array_equal(tokens[0], tokens[1])  # same task, different images
    assert np.all((outputs["shared_gate_mass"] > 0) & (outputs["shared_gate_mass"] < 16))
