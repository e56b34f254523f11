"""``/metrics`` after known requests: exact counts, router counters against the model itself."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from server.codecs import decode_image
from server.modeldir import load_model_dir
from server.pipeline import preprocess
from tests.server.conftest import PREDICT, image_bytes, metric, random_image, start_server
from tests.server.test_load import post_all

REQUESTS = [(11, "semseg,edges"), (12, None), (13, "edges"), (14, "normals,parts")]


def expected_router(model_dir, bodies_and_tasks):
    """Run the graph directly on the same preprocessed inputs; sum what the server must count."""
    model = load_model_dir(model_dir)
    session = ort.InferenceSession(str(model.graphs["dense"]), providers=["CPUExecutionProvider"])
    tokens, mass, streams = {}, {}, {}
    for body, tasks in bodies_and_tasks:
        names = tasks.split(",") if tasks else list(model.task_names)
        task_ids = sorted(model.task(n).id for n in names)
        image = preprocess(decode_image(body, 10**8), model)[None]  # (1, 3, H, W)
        feeds = {
            "images": image,
            "stream_image": np.zeros(len(task_ids), np.int64),
            "stream_task": np.array(task_ids, np.int64),
        }
        outputs = dict(zip(model.outputs, session.run(None, feeds), strict=True))
        for row, task_id in enumerate(task_ids):
            name = model.tasks[task_id].name
            tokens[name] = tokens.get(name, 0) + outputs["expert_tokens"][row].astype(np.float64)
            mass[name] = mass.get(name, 0) + outputs["shared_gate_mass"][row].astype(np.float64)
            streams[name] = streams.get(name, 0) + 1
    return tokens, mass, streams


def test_exact_counts_after_known_requests(model_dir, logs):
    server = start_server(model_dir, logs, "--max-wait-ms", "20")
    try:
        bodies = [(image_bytes(random_image(seed)), tasks) for seed, tasks in REQUESTS]
        responses = asyncio.run(
            post_all(server.url, [b for b, _ in bodies], [t for _, t in bodies])
        )
        assert all(r.status_code == 200 for r in responses)
        with server.client() as client:
            junk = client.post("/predict", content=b"junk", headers={"Content-Type": "image/png"})
            assert junk.status_code == 400
        values = server.metrics()
    finally:
        server.stop()
    assert metric(values, "ase_requests_total", **PREDICT, status="200") == 4
    assert metric(values, "ase_requests_total", **PREDICT, status="400") == 1
    assert metric(values, "ase_request_duration_seconds_count", **PREDICT) == 5
    assert metric(values, "ase_queue_wait_seconds_count") == 4
    assert metric(values, "ase_batch_size_sum") == 4
    assert metric(values, "ase_batch_streams_sum") == 2 + 5 + 1 + 2
    calls = metric(values, "ase_batch_size_count")
    assert metric(values, "ase_inference_duration_seconds_count") == calls
    assert metric(values, "ase_queue_depth") == 0
    info = [labels for (name, labels) in values if name == "ase_model_info"]
    assert dict(info[0])["provider"] == "CPUExecutionProvider"
    assert dict(info[0])["adapters"] == "16/3/1/4"

    tokens, mass, streams = expected_router(model_dir, bodies)
    for task, count in streams.items():
        assert metric(values, "ase_task_requests_total", task=task) == count
        for layer in range(2):
            through = metric(values, "ase_stream_tokens_total", layer=str(layer), task=task)
            assert through == 16 * count
            got = metric(values, "ase_shared_gate_mass_total", layer=str(layer), task=task)
            assert got == pytest.approx(mass[task][layer], rel=1e-6)
            for expert in range(16):
                kind = "shared" if expert == 15 else "routed"
                labels = {"layer": str(layer), "task": task, "expert": str(expert), "kind": kind}
                got = metric(values, "ase_expert_tokens_total", **labels)
                assert got == tokens[task][layer, expert]


def test_counts_are_exact_across_worker_processes(model_dir, logs, tmp_path):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    server = start_server(model_dir, logs, "--workers", "2", env=env)
    try:
        for seed in range(8):  # a fresh connection each time, so both workers take some
            body = image_bytes(random_image(seed))
            response = post_when_ready(server.url, body, "saliency")
            assert response.status_code == 200
        scrapes = [server.metrics() for _ in range(3)]  # any worker answers with the same totals
    finally:
        server.stop()
    for values in scrapes:
        assert metric(values, "ase_requests_total", **PREDICT, status="200") == 8
        assert metric(values, "ase_task_requests_total", task="saliency") == 8
        assert metric(values, "ase_stream_tokens_total", layer="1", task="saliency") == 8 * 16
    pids = {dict(labels).get("pid") for (name, labels) in scrapes[0] if name == "ase_model_info"}
    assert pids == {None}  # model info is merged over workers, not one series per process


def post_when_ready(url: str, body: bytes, tasks: str) -> httpx.Response:
    """Post, honouring 503 + Retry-After: a second worker may still be warming up after the
    first one answered /readyz (only 200s are counted by the assertions)."""
    for _ in range(100):
        response = httpx_post(url, body, tasks)
        if response.status_code != 503:
            return response
        time.sleep(0.1)
    return response


def httpx_post(url: str, body: bytes, tasks: str) -> httpx.Response:
    return httpx.post(
        f"{url}/predict",
        params={"tasks": tasks},
        content=body,
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
