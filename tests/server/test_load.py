"""Under load: batching equivalence, a full queue, deadlines, clients that leave, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.server.conftest import (
    PREDICT,
    decoded,
    image_bytes,
    metric,
    random_image,
    start_server,
)
from tests.server.fake_model import write_fake_model_dir

TASK_SETS = [
    "semseg",
    "normals,edges",
    None,
    "parts,saliency",
    "semseg,edges",
    None,
    "edges",
    "parts",
]


async def post_all(url: str, bodies: list[bytes], tasks: list[str | None]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        requests = [
            client.post(
                "/predict",
                params={"tasks": t} if t else {},
                content=b,
                headers={"Content-Type": "image/png"},
            )
            for b, t in zip(bodies, tasks, strict=True)
        ]
        return await asyncio.gather(*requests)


def test_batched_responses_equal_lone_responses(server):
    bodies = [image_bytes(random_image(100 + i)) for i in range(len(TASK_SETS))]
    before = server.metrics()
    together = asyncio.run(post_all(server.url, bodies, TASK_SETS))
    after = server.metrics()
    alone = [
        asyncio.run(post_all(server.url, [b], [t]))[0]
        for b, t in zip(bodies, TASK_SETS, strict=True)
    ]
    for batched, single in zip(together, alone, strict=True):
        assert batched.status_code == single.status_code == 200
        assert decoded(batched.json()["tasks"]) == decoded(single.json()["tasks"])
    calls = metric(after, "ase_batch_size_count") - metric(before, "ase_batch_size_count")
    images = metric(after, "ase_batch_size_sum") - metric(before, "ase_batch_size_sum")
    assert images == len(bodies) and calls < len(bodies)  # some requests really shared a call


def test_two_model_instances_answer_as_one(server, model_dir, logs):
    """``--instances 2``: concurrent requests on two ORT sessions in one process get the same
    PNGs as the one-instance server gives each alone."""
    bodies = [image_bytes(random_image(200 + i)) for i in range(len(TASK_SETS))]
    two = start_server(model_dir, logs, "--instances", "2", "--max-batch", "2")
    try:
        together = asyncio.run(post_all(two.url, bodies, TASK_SETS))
        served = two.metrics()
    finally:
        two.stop()
    pairs = zip(bodies, TASK_SETS, strict=True)
    alone = [asyncio.run(post_all(server.url, [b], [t]))[0] for b, t in pairs]
    for batched, single in zip(together, alone, strict=True):
        assert batched.status_code == single.status_code == 200
        assert decoded(batched.json()["tasks"]) == decoded(single.json()["tasks"])
    assert metric(served, "ase_batch_size_sum") == len(bodies)


@pytest.fixture(scope="module")
def slow_server(slow_model_dir, logs):
    flags = ("--max-batch", "1", "--max-queue", "2", "--max-wait-ms", "0", "--timeout-s", "20")
    server = start_server(slow_model_dir, logs, *flags)
    yield server
    server.stop()


def test_full_queue_answers_503_with_retry_after(slow_server):
    bodies = [image_bytes(random_image(i)) for i in range(10)]
    responses = asyncio.run(post_all(slow_server.url, bodies, ["edges"] * 10))
    statuses = [r.status_code for r in responses]
    rejected = [r for r in responses if r.status_code == 503]
    # At least the two queue places are served (a third when the model took one request
    # before the others had all arrived); the rest are turned away at once.
    assert rejected and statuses.count(200) >= 2 and set(statuses) == {200, 503}
    assert all(r.headers["Retry-After"] == "1" for r in rejected)
    assert all(r.json()["error"]["code"] == "overloaded" for r in rejected)
    values = slow_server.metrics()
    assert metric(values, "ase_requests_total", **PREDICT, status="503") == len(rejected)


@pytest.fixture(scope="module")
def slower_server(tmp_path_factory, logs):
    """~1 s a model call: room for a loaded machine to queue a request behind a running one."""
    model_dir = write_fake_model_dir(tmp_path_factory.mktemp("slower"), heavy_matmuls=700)
    flags = ("--max-batch", "1", "--max-queue", "2", "--max-wait-ms", "0", "--timeout-s", "20")
    server = start_server(model_dir, logs, *flags)
    yield server
    server.stop()


def wait_for(condition, seconds: float = 10.0) -> None:
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "timed out waiting for the server"
        time.sleep(0.02)


def test_client_that_leaves_costs_no_model_time(slower_server):
    server = slower_server
    before = server.metrics()
    body = image_bytes(random_image(1))
    port = int(server.url.rsplit(":", 1)[1])
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(
            httpx.post,
            f"{server.url}/predict?tasks=edges",
            content=body,
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        time.sleep(0.2)  # the first request reaches the model (a ~1 s call)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (
                f"POST /predict?tasks=semseg HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            sock.sendall(head + body)
            wait_for(lambda: metric(server.metrics(), "ase_queue_depth") == 1)  # queued behind
        assert busy.result().status_code == 200
    name, reason = "ase_requests_dropped_total", "disconnected"
    wait_for(
        lambda: metric(server.metrics(), name, reason=reason) > metric(before, name, reason=reason)
    )
    time.sleep(0.2)
    after = server.metrics()
    assert metric(after, name, reason=reason) - metric(before, name, reason=reason) == 1
    served = metric(after, "ase_task_requests_total", task="semseg")
    assert served == metric(before, "ase_task_requests_total", task="semseg")
    assert metric(after, "ase_queue_depth") == 0


def test_deadline_answers_504(slow_model_dir, logs):
    # ~0.15 s a call, one request at a time: the first of ten finish inside 1 s even when the
    # machine is three times slower, the last cannot finish in time even when it is not.
    flags = ("--max-batch", "1", "--max-queue", "16", "--timeout-s", "1.0")
    server = start_server(slow_model_dir, logs, *flags)
    try:
        bodies = [image_bytes(random_image(i)) for i in range(10)]
        responses = asyncio.run(post_all(server.url, bodies, ["edges"] * 10))
        time.sleep(0.5)  # let the model finish what it had started
        values = server.metrics()
    finally:
        server.stop()
    late = [r for r in responses if r.status_code == 504]
    assert late and any(r.status_code == 200 for r in responses)
    assert all(r.json()["error"]["code"] == "deadline_exceeded" for r in late)
    # A late request either never reached the model (it leaves the queue as a deadline drop,
    # not a disconnect) or was inside it when its deadline passed; deadlines count from each
    # request's arrival, so several can end mid-call one after another, but the last ones can
    # never start. Every request was either run or dropped, never both; nothing is left queued.
    dropped = metric(values, "ase_requests_dropped_total", reason="deadline")
    ran = metric(values, "ase_task_requests_total", task="edges")
    assert 1 <= dropped <= len(late)
    assert dropped + ran == len(responses)
    assert metric(values, "ase_requests_dropped_total", reason="disconnected") == 0
    assert metric(values, "ase_queue_depth") == 0


def test_sigterm_finishes_requests_in_flight(slow_model_dir, logs):
    server = start_server(slow_model_dir, logs, "--max-batch", "1")
    bodies = [image_bytes(random_image(i)) for i in range(4)]

    async def requests_then_sigterm():
        pending = asyncio.ensure_future(post_all(server.url, bodies, ["normals"] * 4))
        await asyncio.sleep(0.15)  # all four sent, at most one finished
        server.process.send_signal(signal.SIGTERM)
        return await pending

    responses = asyncio.run(requests_then_sigterm())
    assert [r.status_code for r in responses] == [200] * 4
    # uvicorn re-raises the signal once it has shut down cleanly, so "killed by SIGTERM" is a
    # clean exit here; a crash or a kill after the drain timeout would not be.
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=2)
