"""Decoding, post-processing and the exported model, without a server."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from server import pipeline
from server.codecs import decode, decode_image, open_upload, to_rgb
from server.errors import InvalidInput, TooLarge
from server.maps import colourise, overlay, restore_size, to_uint8
from server.modeldir import load_model_dir
from tests.server.conftest import image_bytes, random_image

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "demo" / "model"


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


def rotated_by_a_string(rgb: np.ndarray) -> bytes:
    """A JPEG whose EXIF orientation is the ASCII string "6" (a SHORT in the standard): one
    IFD entry, tag 0x0112, type 2 (ASCII), two bytes "6\\0", written by hand (PIL would not)."""
    entry = struct.pack("<HHI", 0x0112, 2, 2) + b"6\x00\x00\x00"
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + bytes(4)
    return image_bytes(rgb, "JPEG", exif=b"Exif\x00\x00" + tiff, quality=95)


def test_an_orientation_written_as_text_is_ignored_by_size_and_pixels_alike():
    rgb = random_image(3, height=24, width=40)
    body = rotated_by_a_string(rgb)
    assert Image.open(io.BytesIO(body)).getexif()[0x0112] == "6"  # as PIL reads it
    upload = open_upload(body, 10**6)
    assert (upload.width, upload.height) == (40, 24)  # not turned ...
    assert decode(upload).shape == (24, 40, 3)  # ... and neither are the pixels


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_turns_size_and_pixels_as_pil_does(orientation):
    rgb = random_image(4, height=16, width=24)
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = image_bytes(rgb, exif=exif)  # PNG: lossless, so the pixels compare exactly
    upload = open_upload(body, 10**6)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(body))).convert("RGB"))
    assert np.array_equal(decode(upload), expected)
    assert (upload.height, upload.width) == expected.shape[:2]


def test_a_jpeg_whose_scan_stops_short_of_its_header_is_an_error():
    """The header says 6000x6000, the scan carries 1024x768: libjpeg would fill 97.8% grey."""
    rgb = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), np.uint8)
    body = bytearray(image_bytes(rgb, "JPEG", quality=90))
    frame = body.find(b"\xff\xc0")
    struct.pack_into(">HH", body, frame + 5, 6000, 6000)
    with pytest.raises(InvalidInput, match="truncated"):
        decode(open_upload(bytes(body), 10**8), 8)
    whole = image_bytes(rgb, "JPEG", quality=90)
    for scale in (1, 2, 8):  # a whole scan decodes to what PIL decodes
        reference = Image.open(io.BytesIO(whole))
        if scale > 1:
            reference.draft(None, (1024 // scale, 768 // scale))
        assert np.array_equal(decode(open_upload(whole, 10**8), scale), np.asarray(reference))


def test_a_png_whose_exif_follows_its_pixels_is_not_decoded_to_find_it(monkeypatch):
    rgb = random_image(5, height=20, width=30)
    decoded = []
    original = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(
        PngImagePlugin.PngImageFile, "load", lambda self: decoded.append(1) or original(self)
    )
    upload = open_upload(image_bytes(rgb), 10**6)
    assert not decoded and (upload.width, upload.height) == (30, 20)


@pytest.mark.parametrize(("width", "height"), [(4_000_000, 1), (1, 4_000_000), (2000, 2000)])
def test_the_planned_cost_covers_what_decoding_holds_at_any_shape(tmp_path, width, height):
    """Peak memory of open, decode and preprocess (a fresh process, its VmHWM) within the
    plan's cost: 1 x 4,000,000 took 30 bytes a pixel (PIL's row table, the resize's weights)
    where 8 were planned."""
    path = tmp_path / "image.png"
    Image.new("RGB", (width, height), (10, 200, 30)).save(path, "PNG", compress_level=1)
    script = f"""
import gc
from pathlib import Path
from server.modeldir import load_model_dir
from server.pipeline import MapRequest, MapSize, Pipeline
def kib(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
model = load_model_dir({str(DEMO_MODEL)!r})
pipeline = Pipeline(model, None, None, 10**9)
body = Path({str(path)!r}).read_bytes()
gc.collect()
open("/proc/self/clear_refs", "w").write("5")
idle = kib("VmRSS")
plan = pipeline.plan(pipeline.open(body), MapRequest(tuple(model.tasks), MapSize(model=True)))
pipeline.decode(plan)
print((kib("VmHWM") - idle) * 1024, plan.cost_bytes)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    peak, cost = map(int, done.stdout.split())
    assert peak <= cost, (peak >> 20, cost >> 20)
