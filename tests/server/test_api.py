"""Every API path against a real server on a tiny exported model."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from model.tasks import TASK_NAMES, TASKS
from tests.server.conftest import decoded, image_bytes, png_pixels, random_image


def predict(server, body: bytes, content_type: str = "image/png", **params):
    with server.client() as client:
        return client.post(
            "/predict", params=params, content=body, headers={"Content-Type": content_type}
        )


def test_probes_and_model_description(server):
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "alive"}
        assert client.get("/readyz").json() == {"status": "ready"}
        listed = client.get("/v1/models").json()
    assert listed["default_model"] == "ase-tiny" and len(listed["models"]) == 1
    models = listed["models"][0]
    assert (models["name"], models["version"]) == ("ase-tiny", "1")
    assert [t["name"] for t in models["tasks"]] == list(TASK_NAMES)
    assert models["providers"] == ["CPUExecutionProvider"]
    assert models["adapters"]["experts"] == 16 and models["adapters"]["shared_experts"] == [15]
    assert models["input"]["height"] == 32 and models["max_batch"] == 8
    semseg = models["tasks"][0]
    assert len(semseg["classes"]) == len(semseg["palette"]) == semseg["channels"]


def test_json_has_every_task_at_the_image_size(server):
    rgb = random_image(1, height=40, width=56)
    response = predict(server, image_bytes(rgb))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": 56, "height": 40}
    assert set(body["tasks"]) == set(TASK_NAMES)
    assert set(body["timings_ms"]) == {"decode", "queue", "inference", "postprocess", "total"}
    assert body["model"]["name"] == "ase-tiny" and body["provider"] == "CPUExecutionProvider"
    assert body["model"]["version"] == "1" and response.headers["X-Model-Version"] == "1"
    for name, entry in body["tasks"].items():
        pixels = png_pixels(entry["data"])
        assert list(pixels.shape) == entry["shape"]
        assert entry["kind"] == TASKS[name].kind
        if entry["kind"] == "classes":
            assert pixels.dtype == np.uint8 and pixels.max() < len(entry["classes"])
            assert len(np.unique(pixels)) > 1  # a structured image gives a structured map
        if entry["kind"] == "vector":
            normals = pixels / 127.5 - 1.0
            assert np.allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=0.03)
    assert "router" not in body


def test_requested_tasks_only_and_router_stats(server):
    response = predict(
        server, image_bytes(random_image(2)), tasks="normals,semseg", router_stats="true"
    )
    body = response.json()
    assert list(body["tasks"]) == ["semseg", "normals"]
    router = body["router"]["semseg"]
    assert len(router["expert_tokens"]) == 2 and len(router["expert_tokens"][0]) == 16
    for layer in router["expert_tokens"]:  # k=3 routed experts per token + 1 shared on all
        assert sum(layer) == router["tokens_per_layer"] * 4
    assert all(0 < share < 1 for share in router["shared_gate_share"])


def test_multipart_equals_raw_body(server):
    body = image_bytes(random_image(3), "JPEG", quality=90)
    raw = predict(server, body, "image/jpeg", tasks="parts").json()
    with server.client() as client:
        files = {"file": ("x.jpg", body, "image/jpeg")}
        multipart = client.post("/predict", params={"tasks": "parts"}, files=files).json()
    assert decoded(raw["tasks"]) == decoded(multipart["tasks"])


def test_png_format_returns_the_map_itself(server):
    body = image_bytes(random_image(4))
    as_json = predict(server, body, tasks="saliency").json()
    response = predict(server, body, tasks="saliency", format="png")
    assert response.headers["content-type"] == "image/png"
    assert "inference;dur=" in response.headers["server-timing"]
    pixels = png_pixels(as_json["tasks"]["saliency"]["data"])
    assert np.array_equal(png_pixels(response.content), pixels)


def test_npz_format_carries_raw_arrays(server):
    rgb = random_image(5)
    response = predict(server, image_bytes(rgb), format="npz", router_stats="true")
    arrays = np.load(io.BytesIO(response.content))
    assert arrays["semseg"].dtype == np.uint8 and arrays["semseg"].shape == rgb.shape[:2]
    assert arrays["edges"].dtype == np.uint8
    assert arrays["normals"].dtype == np.float32 and arrays["normals"].shape == rgb.shape
    assert np.allclose(np.linalg.norm(arrays["normals"], axis=-1), 1.0, atol=1e-4)
    assert arrays["router_parts"].shape == (2, 16)
    assert arrays["router_parts_shared_gate_share"].shape == (2,)
    as_json = predict(server, image_bytes(rgb), tasks="semseg").json()
    assert np.array_equal(png_pixels(as_json["tasks"]["semseg"]["data"]), arrays["semseg"])


def test_visualize_blends_the_palette_over_the_image(server):
    rgb = random_image(6)
    plain = predict(server, image_bytes(rgb), tasks="semseg").json()["tasks"]["semseg"]
    shown = predict(server, image_bytes(rgb), tasks="semseg", visualize="true", alpha="1").json()
    overlay = png_pixels(shown["tasks"]["semseg"]["data"])
    palette = np.asarray(plain["palette"], np.uint8)
    assert overlay.shape == rgb.shape and shown["tasks"]["semseg"]["shape"] == list(rgb.shape)
    assert np.array_equal(overlay, palette[png_pixels(plain["data"])])
    half = predict(server, image_bytes(rgb), tasks="semseg", visualize="true", format="png")
    blended = png_pixels(half.content).astype(np.int16)
    expected = (rgb.astype(np.float32) + overlay) / 2
    assert np.abs(blended - expected).max() <= 1


def test_exif_orientation_is_applied(server):
    rgb = random_image(7, height=32, width=48)
    upright = predict(server, image_bytes(rgb), tasks="semseg").json()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored pixels are the upright rotated back
    stored = np.rot90(rgb, k=1)  # (48, 32, 3)
    rotated = predict(server, image_bytes(stored, exif=exif), tasks="semseg").json()
    assert rotated["image"] == {"width": 48, "height": 32}
    assert np.array_equal(
        png_pixels(rotated["tasks"]["semseg"]["data"]),
        png_pixels(upright["tasks"]["semseg"]["data"]),
    )


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16", "CMYK", "LA", "1"])
def test_every_image_mode_is_served(server, mode):
    rgb = random_image(8)
    if mode == "I;16":
        image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    elif mode == "P":
        image = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = Image.fromarray(rgb).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if mode == "CMYK" else "PNG")
    response = predict(server, buffer.getvalue(), tasks="semseg")
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": rgb.shape[1], "height": rgb.shape[0]}


def test_openapi_documents_parameters_and_errors(server):
    with server.client() as client:
        schema = client.get("/openapi.json").json()
        served = client.get("/v1/models").json()["default_model"]
    operation = schema["paths"]["/predict"]["post"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert set(parameters) == {
        "tasks",
        "format",
        "visualize",
        "alpha",
        "router_stats",
        "size",
        "max_side",
        "npz_normals",
        "model",
        "version",
    }
    assert all(p.get("description") for p in parameters.values())
    assert {"400", "401", "404", "413", "415", "422", "503", "504"} <= set(operation["responses"])
    assert "multipart/form-data" in operation["requestBody"]["content"]
    error = operation["responses"]["415"]["content"]["application/json"]["schema"]
    assert error["$ref"].endswith("/ErrorResponse")
    assert "multipart/mixed" in operation["responses"]["200"]["content"]  # png, several tasks
    pattern = parameters["tasks"]["schema"]["pattern"]  # the served model's task names
    assert all(re.search(pattern, ok) for ok in ("semseg", "normals,edges", "parts , saliency"))
    assert not any(re.search(pattern, bad) for bad in ("", "depth", "semseg,", ",", "semseg;x"))
    infer = schema["paths"]["/v2/models/{model_name}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["outputs"]["items"]["properties"]["name"]["enum"] == [
        "semseg",
        "parts",
        "saliency",
        "normals",
        "edges",
        "expert_tokens",
        "shared_gate_mass",
    ]
    model_name = infer["parameters"][0]["schema"]
    assert model_name["enum"] == [served]
