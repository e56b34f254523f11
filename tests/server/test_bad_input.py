"""Every bad input gets the one error shape, a 4xx, and leaves the server serving; combinations
of parameters that the schema allows are served (they were once refused)."""

from __future__ import annotations

import email
import email.policy
import io
import struct
import zlib

import numpy as np
import orjson
import pytest

from tests.server.conftest import decoded, image_bytes, png_pixels, random_image

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


def jpeg_scan_short_of_its_header(width: int = 1500, height: int = 1500) -> bytes:
    """A 320x240 JPEG whose header says ``width`` x ``height``: its scan ends early."""
    rgb = np.random.default_rng(1).integers(0, 256, (240, 320, 3), np.uint8)
    body = bytearray(image_bytes(rgb, "JPEG", quality=90))
    frame = body.find(b"\xff\xc0")
    struct.pack_into(">HH", body, frame + 5, height, width)
    return bytes(body)


CASES = [
    # (id, body, content type, query, status, code)
    (
        "jpeg_scan_short_of_its_header",
        jpeg_scan_short_of_its_header(),
        "image/jpeg",
        {},
        400,
        "invalid_image",
    ),
    ("not_an_image", b"hello, I am text" * 10, "image/png", {}, 400, "invalid_image"),
    ("truncated_png", GOOD[: len(GOOD) // 2], "image/png", {}, 400, "invalid_image"),
    ("truncated_jpeg", JPEG[: len(JPEG) // 2], "image/jpeg", {}, 400, "invalid_image"),
    ("empty_body", b"", "image/png", {}, 400, "empty_body"),
    # A format PIL can read but the server does not accept: only the promised decoders run.
    (
        "ppm_not_accepted",
        b"P6\n4 4\n255\n" + b"\x80" * 48,
        "image/x-portable-pixmap",
        {},
        400,
        "invalid_image",
    ),
    ("bomb", png_header_only(30000, 30000), "image/png", {}, 413, "image_too_large"),
    ("over_pixel_setting", png_header_only(3000, 3000), "image/png", {}, 413, "image_too_large"),
    ("too_big_body", b"\x00" * 300_000, "image/png", {}, 413, "payload_too_large"),
    ("media_type", GOOD, "application/json", {}, 415, "unsupported_media_type"),
    ("form", GOOD, "application/x-www-form-urlencoded", {}, 415, "unsupported_media_type"),
    ("unknown_task", GOOD, "image/png", {"tasks": "semseg,depth"}, 422, "unknown_task"),
    ("duplicate_task", GOOD, "image/png", {"tasks": "edges,edges"}, 422, "duplicate_task"),
    ("bad_format", GOOD, "image/png", {"format": "bmp"}, 422, "invalid_parameter"),
    ("bad_alpha", GOOD, "image/png", {"visualize": "true", "alpha": "2"}, 422, "invalid_parameter"),
    ("empty_tasks", GOOD, "image/png", {"tasks": ""}, 422, "invalid_parameter"),
    ("blank_tasks", GOOD, "image/png", {"tasks": " , "}, 422, "invalid_parameter"),
    ("bad_size", GOOD, "image/png", {"size": "huge"}, 422, "invalid_parameter"),
    ("max_side_zero", GOOD, "image/png", {"max_side": "0"}, 422, "invalid_parameter"),
    ("max_side_negative", GOOD, "image/png", {"max_side": "-4"}, 422, "invalid_parameter"),
    ("max_side_text", GOOD, "image/png", {"max_side": "big"}, 422, "invalid_parameter"),
    ("max_side_huge", GOOD, "image/png", {"max_side": "70000"}, 422, "invalid_parameter"),
    (
        "bad_npz_normals",
        GOOD,
        "image/png",
        {"format": "npz", "npz_normals": "half"},
        422,
        "invalid_parameter",
    ),
]


@pytest.fixture(scope="module")
def limited_server(model_dir, logs):
    from tests.server.conftest import start_server

    server = start_server(model_dir, logs, "--max-body-bytes", "200000", "--max-pixels", "4000000")
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("body", "content_type", "query", "status", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_a_clear_4xx_and_harmless(
    limited_server, body, content_type, query, status, code
):
    with limited_server.client() as client:
        response = client.post(
            "/predict", params=query, content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and error["status"] == status
        assert len(error["message"]) > 20
        after = client.post(
            "/predict",
            params={"tasks": "semseg"},
            content=GOOD,
            headers={"Content-Type": "image/png"},
        )
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
        response = client.post(
            "/predict",
            params=query,
            content=image_bytes(big),
            headers={"Content-Type": "image/png"},
        )
    assert response.status_code == 200
    assert np.load(io.BytesIO(response.content))["semseg"].shape == (1200, 1600)


def multipart_parts(response) -> dict[str, tuple[str, bytes]]:
    """A multipart/mixed body -> {part name (Content-Disposition): (content type, bytes)}."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content, policy=email.policy.HTTP)
    assert message.is_multipart()
    return {
        part.get_param("name", header="content-disposition"): (
            part.get_content_type(),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    }


def predict(client, **query):
    response = client.post(
        "/predict", params=query, content=GOOD, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200, response.text
    return response


def test_png_with_several_tasks_is_a_multipart_of_pngs(limited_server):
    with limited_server.client() as client:
        as_json = predict(client, tasks="parts,semseg", router_stats="true").json()
        two = predict(client, format="png", tasks="parts,semseg")
        every = predict(client, format="png")
        with_router = predict(client, format="png", tasks="edges", router_stats="true")
        one = predict(client, format="png", tasks="edges")
    assert two.headers["content-type"].startswith("multipart/mixed; boundary=")
    parts = multipart_parts(two)
    assert list(parts) == ["semseg", "parts"]  # registry order, as json's tasks
    for task, (content_type, data) in parts.items():
        assert content_type == "image/png"
        assert np.array_equal(png_pixels(data), png_pixels(as_json["tasks"][task]["data"]))
        assert png_pixels(data).shape == (40, 56)
    assert list(multipart_parts(every)) == ["semseg", "parts", "saliency", "normals", "edges"]
    router = multipart_parts(with_router)
    assert list(router) == ["edges", "router"] and router["router"][0] == "application/json"
    assert list(orjson.loads(router["router"][1])) == ["edges"]
    assert one.headers["content-type"] == "image/png"  # one task: the PNG itself, as before
    assert np.array_equal(png_pixels(one.content), png_pixels(router["edges"][1]))


def test_npz_with_visualize_carries_the_overlays(limited_server):
    with limited_server.client() as client:
        shown = predict(client, tasks="semseg,normals", visualize="true", alpha="0.7").json()
        npz = predict(client, tasks="semseg,normals", visualize="true", alpha="0.7", format="npz")
    arrays = np.load(io.BytesIO(npz.content))
    assert sorted(arrays.files) == ["normals", "semseg"]
    for task in ("semseg", "normals"):
        picture = png_pixels(shown["tasks"][task]["data"])
        assert arrays[task].dtype == np.uint8 and arrays[task].shape == (40, 56, 3)
        assert np.array_equal(arrays[task], picture)


def test_size_model_with_max_side_bounds_the_models_size(limited_server):
    with limited_server.client() as client:
        answer = predict(client, size="model", max_side="10", tasks="semseg").json()
    assert answer["maps"] == {"width": 10, "height": 10, "scale": [5.6, 4.0]}  # tiny: 32 px
    assert png_pixels(answer["tasks"]["semseg"]["data"]).shape == (10, 10)


def test_npz_normals_is_ignored_by_other_formats(limited_server):
    with limited_server.client() as client:
        asked = predict(client, tasks="normals", npz_normals="uint8").json()
        plain = predict(client, tasks="normals").json()
    assert decoded(asked["tasks"]) == decoded(plain["tasks"])
