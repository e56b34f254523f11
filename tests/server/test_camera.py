"""Camera-size uploads: the maps' size chosen by the client, JPEGs decoded at the scale the
model needs (and every other upload exactly as before), npz streamed, and memory bounded by
the budget under a burst of 39-megapixel requests."""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter

import httpx
import numpy as np
import pytest
from PIL import Image

from server import codecs
from server.maps import Raster
from server.modeldir import load_model_dir
from server.pipeline import MapRequest, MapSize, Pipeline, preprocess
from server.runtime import ModelRuntime
from tests.server.conftest import image_bytes, png_pixels, random_image, start_server


def post(server, body: bytes, content_type: str = "image/png", **params) -> httpx.Response:
    with server.client() as client:
        return client.post(
            "/predict", params=params, content=body, headers={"Content-Type": content_type}
        )


def smooth_photo(height: int, width: int) -> np.ndarray:
    """A camera-like picture at any size, cheaply: the smooth test picture scaled up."""
    small = random_image(9, height=max(height // 16, 8), width=max(width // 16, 8))
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))


def test_size_model_gives_maps_at_the_models_size_with_the_scale(server):
    body = image_bytes(random_image(20, height=64, width=96))
    answer = post(server, body, size="model")
    assert answer.status_code == 200, answer.text
    grid = answer.json()["maps"]
    assert grid == {"width": 32, "height": 32, "scale": [3.0, 2.0]}  # the tiny model is 32 px
    assert answer.headers["x-map-scale"] == "3,2"
    for entry in answer.json()["tasks"].values():
        assert entry["shape"][:2] == [32, 32] and png_pixels(entry["data"]).shape[:2] == (32, 32)
    npz = np.load(io.BytesIO(post(server, body, size="model", format="npz").content))
    assert npz["normals"].shape == (32, 32, 3) and npz["semseg"].shape == (32, 32)


@pytest.mark.parametrize(("max_side", "expected"), [(40, (40, 20)), (500, (120, 60)), (1, (1, 1))])
def test_max_side_bounds_the_longest_side_and_keeps_the_aspect(server, max_side, expected):
    body = image_bytes(random_image(21, height=60, width=120))
    answer = post(server, body, max_side=str(max_side), tasks="semseg,normals")
    assert answer.status_code == 200, answer.text
    width, height = expected
    assert answer.json()["maps"]["width"] == width and answer.json()["maps"]["height"] == height
    assert answer.json()["image"] == {"width": 120, "height": 60}  # the upload's, as before
    png = post(server, body, max_side=str(max_side), tasks="parts", format="png")
    assert Image.open(io.BytesIO(png.content)).size == (width, height)


def test_npz_normals_as_bytes_equal_the_pngs(server):
    body = image_bytes(random_image(22, height=50, width=70))
    npz = np.load(io.BytesIO(post(server, body, format="npz", npz_normals="uint8").content))
    assert npz["normals"].dtype == np.uint8 and npz["normals"].shape == (50, 70, 3)
    as_json = post(server, body, tasks="normals").json()
    assert np.array_equal(npz["normals"], png_pixels(as_json["tasks"]["normals"]["data"]))
    floats = np.load(io.BytesIO(post(server, body, format="npz").content))["normals"]
    assert floats.dtype == np.float32
    assert np.array_equal(np.rint((np.clip(floats, -1, 1) + 1) * np.float32(127.5)), npz["normals"])


def plan_of(model_dir, body: bytes, request: MapRequest | None = None):
    model = load_model_dir(model_dir)
    pipeline = Pipeline(model, None, None, 10**9)
    return pipeline.plan(pipeline.open(body), request or MapRequest(tuple(model.tasks)))


def test_which_uploads_are_decoded_at_a_reduced_scale(model_dir):
    """The largest of 1/8, 1/4, 1/2 that keeps both sides at least twice the model's input (the
    tiny model: 64 px); only JPEGs; none when the overlay needs the image at upload size."""
    photo = smooth_photo(480, 640)
    jpeg = image_bytes(photo, "JPEG", quality=90)
    assert plan_of(model_dir, jpeg).dct_scale == 4  # 160x120; 1/8 would be 80x60: 60 < 64
    assert plan_of(model_dir, image_bytes(photo[:, :512], "JPEG")).dct_scale == 4
    assert plan_of(model_dir, image_bytes(photo[:130, :130], "JPEG")).dct_scale == 2
    assert plan_of(model_dir, image_bytes(photo[:100, :100], "JPEG")).dct_scale == 1
    assert plan_of(model_dir, image_bytes(photo, "PNG")).dct_scale == 1
    progressive = image_bytes(photo, "JPEG", progressive=True)
    assert plan_of(model_dir, progressive).dct_scale == 4
    model = load_model_dir(model_dir)
    overlay = MapRequest(tuple(model.tasks), keep_image=True)
    assert plan_of(model_dir, jpeg, overlay).dct_scale == 1  # the overlay shows 640x480
    shown_small = MapRequest(tuple(model.tasks), MapSize(max_side=160), keep_image=True)
    assert plan_of(model_dir, jpeg, shown_small).dct_scale == 4


def test_a_rotated_jpeg_is_scaled_upright(model_dir):
    photo = smooth_photo(320, 640)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": upright is 640 wide, 320 high
    stored = np.ascontiguousarray(np.rot90(photo, k=1))  # stored 320 wide, 640 high
    body = image_bytes(stored, "JPEG", exif=exif)
    plan = plan_of(model_dir, body)
    assert (plan.width, plan.height) == (640, 320)
    assert plan.dct_scale == 4
    rgb = codecs.decode(plan.upload, plan.dct_scale)
    assert rgb.shape == (80, 160, 3)  # upright, a quarter of each side


def reference_maps(model_dir, body: bytes, scale: int, width: int, height: int) -> dict:
    """What the server must answer, computed here: decode at ``scale``, the graph, each map."""
    model = load_model_dir(model_dir)
    rgb = codecs.decode(codecs.open_upload(body, 10**9), scale)
    # The session as the test server opens it (one thread, brief spin): ORT's sums then run in
    # the same order, so the outputs are equal, not close.
    runtime = ModelRuntime(model, ["CPUExecutionProvider"], threads=1, spin="brief")
    task_ids = np.array([t.id for t in model.tasks], np.int64)
    image = preprocess(rgb, model)[None]
    outputs = runtime.run(image, np.zeros(len(task_ids), np.int64), task_ids)
    return {t.name: Raster(t.kind, outputs[t.name][0], width, height).array() for t in model.tasks}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_served_maps_follow_the_planned_decode(server, model_dir, fmt):
    """A large JPEG reaches the model decoded at 1/2 (160x120; 1/4 would be 80x60 < 64); a PNG
    exactly as before (full decode)."""
    body = image_bytes(smooth_photo(240, 320), fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    scale = 2 if fmt == "JPEG" else 1
    assert plan_of(model_dir, body).dct_scale == scale
    expected = reference_maps(model_dir, body, scale, 320, 240)
    served = post(server, body, "image/jpeg" if fmt == "JPEG" else "image/png").json()["tasks"]
    for name, values in expected.items():
        assert np.array_equal(png_pixels(served[name]["data"]), values), name


BURST, BUDGET_MB, QUEUE = 16, 700, 2
RSS_MARGIN = 256 << 20
"""Memory the budget does not count: the 16 bodies being read (5 MB each), ORT's and the
allocator's working sets, thread stacks, one band per map in flight."""


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) << 10


async def burst(url: str, body: bytes) -> list[tuple[int, int, bytes]]:
    """``BURST`` requests at once; each answer read to its end and discarded as it comes."""

    async def one(client: httpx.AsyncClient) -> tuple[int, int, bytes]:
        headers = {"Content-Type": "image/jpeg"}
        async with client.stream(
            "POST", "/predict", params={"format": "npz"}, content=body, headers=headers
        ) as answer:
            size, tail = 0, b""
            async for chunk in answer.aiter_bytes(1 << 20):
                size, tail = size + len(chunk), (tail + chunk)[-22:]
            return answer.status_code, size, tail

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        return await asyncio.gather(*(one(client) for _ in range(BURST)))


def test_a_burst_of_39_megapixel_npz_requests_stays_in_its_budget(model_dir, logs):
    """16 at once, each 622 MB of maps at upload size: the budget admits one at a time, two
    wait, the rest are told to come back (503); none is over-admitted, RSS peaks within the
    budget and returns near idle after."""
    server = start_server(
        model_dir,
        logs,
        "--memory-budget-mb",
        str(BUDGET_MB),
        "--max-queue",
        str(QUEUE),
        "--timeout-s",
        "300",
    )
    try:
        body = image_bytes(smooth_photo(5400, 7200), "JPEG", quality=90)
        small = image_bytes(smooth_photo(480, 640), "JPEG", quality=90)
        for _ in range(2):  # what small requests leave allocated belongs to idle
            assert post(server, small, "image/jpeg", format="npz").status_code == 200
        pid = server.process.pid
        idle = rss_bytes(pid)
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")  # resets the peak (VmHWM) to the current RSS
        answers = asyncio.run(burst(server.url, body))
        peak = rss_bytes(pid, "VmHWM")
        statuses = Counter(status for status, _, _ in answers)
        assert set(statuses) <= {200, 503} and statuses[200] >= 1, statuses
        maps_bytes = 7200 * 5400 * (1 + 1 + 1 + 12 + 1)
        for status, size, tail in answers:
            if status == 200:  # the whole archive: every map, then the zip's closing record
                assert size > maps_bytes and tail.startswith(b"PK\x05\x06")
        assert peak <= idle + (BUDGET_MB << 20) + RSS_MARGIN, (idle >> 20, peak >> 20)
        give_up = time.monotonic() + 30
        while rss_bytes(pid) > 1.25 * idle and time.monotonic() < give_up:
            time.sleep(0.5)
        assert rss_bytes(pid) <= 1.25 * idle, (idle >> 20, rss_bytes(pid) >> 20)
    finally:
        server.stop()


def test_frames_are_served_together_and_each_equals_its_lone_answer(model_dir):
    """Raw pixels (N, H, W, 3), as video frames come: one reservation for all, queued at once
    so that one model call serves them, each frame's maps equal to that frame sent alone."""
    from server.batching import Batcher
    from server.budget import MemoryBudget
    from server.metrics import ServerMetrics

    model = load_model_dir(model_dir)
    runtime = ModelRuntime(model, ["CPUExecutionProvider"], threads=1, spin="brief")
    frames = np.stack([random_image(30 + i, height=40, width=56) for i in range(3)])
    request = MapRequest(tuple(model.tasks))

    async def serve(batch: np.ndarray):
        metrics = ServerMetrics(model, runtime.provider)
        batcher = Batcher([runtime.run], model, metrics, max_batch=8, max_wait_s=0, max_queue=8)
        budget = MemoryBudget(1 << 30, max_waiting=4)
        pipeline = Pipeline(model, batcher, budget, 10**8)
        batcher.start()
        try:
            predictions = await pipeline.predict_frames(
                batch, request, time.monotonic() + 60, asyncio.Event().wait
            )
            assert budget.in_use == pipeline.plan_frames(batch, request).cost_bytes
            predictions[0].reservation.release()
            assert budget.in_use == 0
            return predictions
        finally:
            await batcher.stop(1)

    together = asyncio.run(serve(frames))
    assert [p.result.batch_images for p in together] == [3, 3, 3]
    for frame, prediction in zip(frames, together, strict=True):
        [alone] = asyncio.run(serve(frame[None]))
        for task in model.tasks:
            assert np.array_equal(prediction.raster(task).array(), alone.raster(task).array())
