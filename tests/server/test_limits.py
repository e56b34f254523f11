"""The connection deadlines and cap of server/limits.py, against a real server over real sockets:
slow heads and bodies are answered 408 and closed by the server, a client that reads none of its
response is dropped and its memory reservation released, connections past the cap get 503."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from tests.server.conftest import PREDICT, image_bytes, metric, random_image, start_server

HEADER_S, BODY_S, SEND_S, MAX_CONNECTIONS = 3, 2, 1, 8
BUDGET_MB = 80
IMAGE = image_bytes(random_image(4))
V2_INFER = {"protocol": "v2", "endpoint": "/v2/models/{model}/infer"}
SAFETY_S = 15  # socket timeouts: only so that a failing test cannot hang


@pytest.fixture(scope="module")
def guarded(model_dir, logs):
    flags = (
        ("--header-timeout-s", HEADER_S),
        ("--body-timeout-s", BODY_S),
        ("--send-timeout-s", SEND_S),
        ("--max-connections", MAX_CONNECTIONS),
        ("--memory-budget-mb", BUDGET_MB),
        ("--timeout-s", 60),
    )
    server = start_server(model_dir, logs, *(str(v) for flag in flags for v in flag))
    yield server
    server.stop()


def connect(server, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:  # before connecting: the window the server may fill
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(SAFETY_S)
    sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


class Trickle(threading.Thread):
    """Sends ``first``, then one byte of ``then`` every 0.1 s until the server closes the
    connection; ``answer`` is what it sent back, ``closed`` is set once it did."""

    def __init__(self, server, first: bytes, then: bytes) -> None:
        super().__init__(daemon=True)
        self.sock, self.first, self.then = connect(server), first, then
        self.closed = threading.Event()
        self.answer = b""

    def run(self) -> None:
        self.sock.sendall(self.first)
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        for index in range(10_000):
            if self.closed.wait(0.1):
                break
            try:
                self.sock.send(self.then[index % len(self.then) :][:1])
            except OSError:
                break
        reader.join(SAFETY_S)
        self.sock.close()

    def _read(self) -> None:
        self.answer = read_until_closed(self.sock)
        self.closed.set()


def test_heads_trickled_byte_by_byte_get_408_and_are_closed_and_others_are_served(guarded):
    slow = [Trickle(guarded, b"POST /predict HTTP/1.1\r\nHost: a\r\n", b"X-Slow: 1\r\n")]
    slow += [
        Trickle(guarded, b"GET /v2/health/live HTTP/1.1\r\n", b"X-Slow: 1\r\n") for _ in range(3)
    ]
    for client in slow:
        client.start()
    with guarded.client() as client:  # while they trickle, another client is served
        answer = client.post("/predict", content=IMAGE, headers={"Content-Type": "image/png"})
    assert answer.status_code == 200
    assert not any(client.closed.is_set() for client in slow)  # ... before any was cut
    errors = []
    for client in slow:
        client.join(SAFETY_S)
        status, headers, body = split(client.answer)
        assert status == 408 and headers["connection"] == "close"
        errors.append(json.loads(body)["error"])
    assert errors[0]["code"] == "request_timeout"  # /predict's error shape, V2's for the others
    assert all("head did not arrive" in error for error in errors[1:])


def test_a_connection_that_sends_nothing_is_closed(guarded):
    with connect(guarded) as sock:
        status, _, body = split(read_until_closed(sock))
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"


@pytest.mark.parametrize(
    ("path", "labels"),
    [("/predict", PREDICT), ("/v2/models/{model}/infer", V2_INFER)],
    ids=["predict", "v2"],
)
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_bodies_slower_than_the_deadline_get_408_and_are_closed(guarded, path, labels, framing):
    before = guarded.metrics()
    path = path.format(model=httpx.get(guarded.url + "/v1/models").json()["default_model"])
    if framing == "length":  # declares a megabyte, sends a byte at a time
        head = f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n"
        slow = Trickle(guarded, head.encode(), b"\x89")
    else:  # an endless chunked body: a one-byte chunk every 0.1 s
        head = f"POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        slow = Trickle(guarded, head.encode(), b"1\r\nx\r\n")
    slow.start()
    slow.join(SAFETY_S)
    status, headers, body = split(slow.answer)
    assert status == 408 and headers["connection"] == "close"
    assert "body did not arrive" in str(json.loads(body)["error"])
    after = guarded.metrics()  # the route saw the client cut: 408 in the metrics, not 499/500
    counted = metric(after, "ase_requests_total", **labels, status="408")
    assert counted == metric(before, "ase_requests_total", **labels, status="408") + 1


def test_connections_past_the_cap_get_503_and_are_closed(guarded):
    kept = []
    for _ in range(MAX_CONNECTIONS):  # each answered once, so that each is surely accepted
        sock = connect(guarded)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        kept.append(sock)
    try:
        with connect(guarded) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            status, headers, body = split(read_until_closed(extra))
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "too_many_connections"
    finally:
        for sock in kept:
            sock.close()
    for _ in range(100):  # the server sees them closed soon after
        if httpx.get(guarded.url + "/healthz", timeout=SAFETY_S).status_code == 200:
            break
        time.sleep(0.1)
    assert httpx.get(guarded.url + "/healthz", timeout=SAFETY_S).status_code == 200


def test_a_client_that_reads_nothing_is_dropped_and_its_reservation_released(guarded):
    """1600 x 1600 normals: 31 MB of npz; decoding and making them takes 65 MiB of the 80 MiB
    budget, a streamed npz holds 17 MiB after. A client asks for them and reads nothing: the
    server drops it once none of the answer left for SEND_S and its 17 MiB go back, so that the
    same request from another client, which had to wait for them, is then served (else it
    would wait to its deadline: 504)."""
    side = 1600
    body = image_bytes(np.tile(random_image(5), (side // 40 + 1, side // 56 + 1, 1))[:side, :side])
    query = "/predict?tasks=normals&format=npz"
    head = f"POST {query} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n"
    with connect(guarded, receive_buffer=4096) as stalled:
        stalled.sendall(head.encode() + body)
        assert stalled.recv(12) == b"HTTP/1.1 200"  # its answer has begun; it reads no more
        with guarded.client() as client:  # the same request: it waits for the budget
            answer = client.post(query, content=body, headers={"Content-Type": "image/png"})
        assert answer.status_code == 200 and len(answer.content) > side * side * 12
        received = 12 + len(read_until_closed(stalled))
    assert received < len(answer.content)  # the stalled one was cut short
