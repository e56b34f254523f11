"""Every bad input gets the one error shape, a 4xx, and leaves the server serving."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

from tests.server.conftest import image_bytes, random_image

GOOD = image_bytes(random_image(0))
JPEG = image_bytes(random_image(0), "JPEG")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size: a decompression bomb is caught before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


CASES = [
    # (id, body, content type, query, status, code)
    ("not_an_image", b"hello, I am text" * 10, "image/png", {}, 400, "invalid_image"),
    ("truncated_png", GOOD[: len(GOOD) // 2], "image/png", {}, 400, "invalid_image"),
    ("truncated_jpeg", JPEG[: len(JPEG) // 2], "image/jpeg", {}, 400, "invalid_image"),
    ("empty_body", b"", "image/png", {}, 400, "empty_body"),
    # A format PIL can read but the server does not accept: only the promised decoders run.
    ("ppm_not_accepted", b"P6\n4 4\n255\n" + b"\x80" * 48, "image/x-portable-pixmap", {}, 400,
     "invalid_image"),
    ("bomb", png_header_only(30000, 30000), "image/png", {}, 413, "image_too_large"),
    ("over_pixel_setting", png_header_only(3000, 3000), "image/png", {}, 413, "image_too_large"),
    ("too_big_body", b"\x00" * 300_000, "image/png", {}, 413, "payload_too_large"),
    ("media_type", GOOD, "application/json", {}, 415, "unsupported_media_type"),
    ("form", GOOD, "application/x-www-form-urlencoded", {}, 415, "unsupported_media_type"),
    ("unknown_task", GOOD, "image/png", {"tasks": "semseg,depth"}, 422, "unknown_task"),
    ("duplicate_task", GOOD, "image/png", {"tasks": "edges,edges"}, 422, "duplicate_task"),
    ("bad_format", GOOD, "image/png", {"format": "bmp"}, 422, "invalid_parameter"),
    ("png_two_tasks", GOOD, "image/png", {"format": "png", "tasks": "semseg,parts"}, 422,
     "invalid_parameter"),
    ("png_all_tasks", GOOD, "image/png", {"format": "png"}, 422, "invalid_parameter"),
    ("bad_alpha", GOOD, "image/png", {"visualize": "true", "alpha": "2"}, 422, "invalid_parameter"),
    ("npz_visualize", GOOD, "image/png", {"format": "npz", "visualize": "true"}, 422,
     "invalid_parameter"),
    ("empty_tasks", GOOD, "image/png", {"tasks": ""}, 422, "invalid_parameter"),
    ("blank_tasks", GOOD, "image/png", {"tasks": " , "}, 422, "invalid_parameter"),
    ("bad_size", GOOD, "image/png", {"size": "huge"}, 422, "invalid_parameter"),
    ("max_side_zero", GOOD, "image/png", {"max_side": "0"}, 422, "invalid_parameter"),
    ("max_side_negative", GOOD, "image/png", {"max_side": "-4"}, 422, "invalid_parameter"),
    ("max_side_text", GOOD, "image/png", {"max_side": "big"}, 422, "invalid_parameter"),
    ("max_side_huge", GOOD, "image/png", {"max_side": "70000"}, 422, "invalid_parameter"),
    ("size_and_max_side", GOOD, "image/png", {"size": "model", "max_side": "10"}, 422,
     "invalid_parameter"),
    ("bad_npz_normals", GOOD, "image/png", {"format": "npz", "npz_normals": "half"}, 422,
     "invalid_parameter"),
    ("npz_normals_with_json", GOOD, "image/png", {"npz_normals": "uint8"}, 422,
     "invalid_parameter"),
]  # fmt: skip


@pytest.fixture(scope="module")
def limited_server(model_dir, logs):
    from tests.server.conftest import start_server

    server = start_server(model_dir, logs, "--max-body-bytes", "200000", "--max-pixels", "4000000")
    yield server
    server.stop()


@pytest.mark.parametrize(("body", "content_type", "query", "status", "code"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])  # fmt: skip
def test_bad_input_is_a_clear_4xx_and_harmless(
    limited_server, body, content_type, query, status, code
):
    with limited_server.client() as client:
        response = client.post("/predict", params=query, content=body,
                               headers={"Content-Type": content_type})  # fmt: skip
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and error["status"] == status
        assert len(error["message"]) > 20
        after = client.post("/predict", params={"tasks": "semseg"}, content=GOOD,
                            headers={"Content-Type": "image/png"})  # fmt: skip
        assert after.status_code == 200


def test_multipart_without_file_field(limited_server):
    with limited_server.client() as client:
        response = client.post("/predict", files={"image": ("x.png", GOOD, "image/png")})
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_multipart"


def test_unknown_path_and_method_use_the_error_shape(limited_server):
    with limited_server.client() as client:
        missing = client.get("/nope")
        wrong = client.get("/predict")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_no_5xx_recorded_after_bad_inputs(limited_server):
    values = limited_server.metrics()
    statuses = {  # /readyz answers 503 until warmed up, by design: the predictions are what count
        dict(labels)["status"]
        for (name, labels) in values
        if name == "ase_requests_total" and dict(labels)["endpoint"] == "/predict"
    }
    assert statuses and not any(status.startswith("5") for status in statuses)


def test_a_big_image_within_limits_still_works(limited_server):
    big = np.zeros((1200, 1600, 3), np.uint8)
    query = {"tasks": "semseg", "format": "npz"}
    with limited_server.client() as client:
        response = client.post("/predict", params=query, content=image_bytes(big),
                               headers={"Content-Type": "image/png"})  # fmt: skip
    assert response.status_code == 200
    assert np.load(io.BytesIO(response.content))["semseg"].shape == (1200, 1600)
