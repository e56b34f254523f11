"""Hostile and careless clients, each as a loop of one crafted request (or one connection's
life) that threads run against a server until told to stop; what each try ended in is counted.
bench/bench_attacks.py times a victim beside them; tests/server/test_hostile_clients.py
checks the server's answers and that the victim is served while they run.

Every attack here was measured against the server before server/limits.py and the checks of
issue 24 (the victim's latency went from 8-9 ms to seconds, or memory went past the budget).
"""

from __future__ import annotations

import functools
import gzip
import io
import multiprocessing
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import httpx
import numpy as np
import orjson
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

SOCKET_TIMEOUT_S = 120  # only so that no attack thread outlives a run by much


@dataclass(frozen=True)
class Target:
    url: str  # http://127.0.0.1:PORT
    grpc: str | None  # 127.0.0.1:PORT of the V2 gRPC service
    model: str  # the served model's name

    def connect(self, receive_buffer: int | None = None) -> socket.socket:
        sock = socket.socket()
        if receive_buffer is not None:  # set before connecting: the window the server may fill
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(SOCKET_TIMEOUT_S)
        host, port = self.url.removeprefix("http://").split(":")
        sock.connect((host, int(port)))
        return sock


@dataclass
class Log:
    """What happened, in order: ``(who, outcome)``; ``who`` is ``victim`` or ``attack<i>``."""

    events: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, who: str, outcome: str) -> None:
        with self.lock:
            self.events.append((who, outcome))

    def outcomes(self, prefix: str = "attack") -> Counter:
        with self.lock:
            return Counter(outcome for who, outcome in self.events if who.startswith(prefix))


# One try of an attack: (target, stop) -> its outcome, e.g. "422" or "408 closed".
Try = Callable[[Target, threading.Event], str]


@dataclass(frozen=True)
class Attack:
    name: str
    what: str  # for the table
    clients: int  # threads, each trying again and again
    one: Try
    warmup_s: float = 0.0  # at least this long running before the victim is timed


class Running:
    """An attack's threads, started at once, stopped by ``stop`` (each ends its current try).
    ``own_process``: the threads run in a process of their own, so that their work in Python
    (building and reading messages) does not take the GIL from the victim timed here."""

    def __init__(self, attack: Attack, target: Target, log: Log, own_process: bool = False):
        self.log = log
        if own_process:
            context = multiprocessing.get_context("spawn")
            self.stop_event, self.outcomes = context.Event(), context.Queue()
            started = context.Event()
            args = (attack.name, target, self.stop_event, self.outcomes, started)
            self.workers = [context.Process(target=_attack_process, args=args, daemon=True)]
            self.workers[0].start()
            started.wait(120)  # its imports and requests built
        else:
            self.stop_event, self.outcomes = threading.Event(), None
            self.workers = attack_threads(attack, target, log, self.stop_event)
            for worker in self.workers:
                worker.start()

    def stop(self, timeout_s: float = 60) -> None:
        self.stop_event.set()
        if self.outcomes is not None:
            for who, outcome in self.outcomes.get(timeout=timeout_s):
                self.log.add(who, outcome)
        for worker in self.workers:
            worker.join(timeout_s)


def attack_threads(attack: Attack, target: Target, log: Log, stop) -> list[threading.Thread]:
    def loop(index: int) -> None:
        while not stop.is_set():
            try:
                outcome = attack.one(target, stop)
            except (OSError, httpx.HTTPError, grpc.RpcError) as error:
                outcome = type(error).__name__
            log.add(f"attack{index}", outcome)

    return [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(attack.clients)]


def _attack_process(name: str, target: Target, stop, outcomes, started) -> None:
    """The attack's threads in a process at the lowest priority: the attackers share the
    machine's cores with the server and the victim, and their own work (building, sending and
    reading requests) would otherwise be counted against the server; the server's work on
    their requests keeps its priority."""
    os.nice(19)
    log = Log()
    threads = attack_threads(ATTACKS[name], target, log, stop)
    for request in (v2_bytes_body, tasks_request, npz_request, png_bomb, failing_message):
        request()  # built before the attack starts, not while the victim is timed
    if name.startswith("grpc_elements"):
        bytes_elements_message(target.model, 20_000_000 if name.endswith("over") else 4_000_000)
    for thread in threads:
        thread.start()
    started.set()
    for thread in threads:
        thread.join()
    outcomes.put(log.events)


def png_bytes(width: int, height: int, level: int = 9) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "PNG", compress_level=level)
    return buffer.getvalue()


SMALL_PNG = png_bytes(64, 48, 1)
TASK_NAMES = ",".join(["semseg"] * 12000)  # an 84 KB query
BYTES_ELEMENTS = 5_000_000


@functools.cache
def v2_bytes_body() -> tuple[bytes, dict[str, str]]:
    """A 20 KB gzip body that inflates to 5 million zero-length BYTES elements (20 MB)."""
    shape, size = [BYTES_ELEMENTS], 4 * BYTES_ELEMENTS
    entry = {"name": "image", "datatype": "BYTES", "shape": shape}
    header = orjson.dumps({"inputs": [{**entry, "parameters": {"binary_data_size": size}}]})
    headers = {"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(header))}
    return gzip.compress(header + bytes(size), 9), headers


def raw_request(target: Target, request: bytes) -> str:
    """One request as it is (``Connection: close``); the status the server answered."""
    with target.connect() as sock:
        sock.sendall(request)
        answer = sock.recv(4096)
        while answer and len(answer) < 12:
            answer += sock.recv(4096)
    return answer[9:12].decode() if answer else "EOF"


@functools.cache
def tasks_request() -> bytes:
    return http_request(f"/predict?tasks={TASK_NAMES}", SMALL_PNG, {"Content-Type": "image/png"})


def tasks_query(target: Target, stop: threading.Event) -> str:
    """The query is longer than httpx sends (64 KiB): written to the socket as it is."""
    return raw_request(target, tasks_request())


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """``POST path`` with ``body`` as bytes to write, ``Connection: close``: the attacks send
    theirs over raw sockets, so that their own CPU (an httpx client's set-up is milliseconds)
    takes little from the machine the victim and the server share."""
    fields = {**headers, "Host": "a", "Content-Length": str(len(body)), "Connection": "close"}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (head + "\r\n").encode() + body


def v2_bytes_elements(target: Target, stop: threading.Event) -> str:
    body, headers = v2_bytes_body()
    path = f"/v2/models/{target.model}/infer"
    return raw_request(target, http_request(path, body, headers))


MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def grpc_call(target: Target, message: service_pb2.ModelInferRequest | bytes) -> str:
    """One ModelInfer call on a channel of its own; its status code's name. A message given
    serialised already goes out as it is (the attacks build theirs once)."""
    options = [("grpc.max_send_message_length", 1 << 30)]
    with grpc.insecure_channel(target.grpc, options=options) as channel:
        if isinstance(message, bytes):
            call = channel.unary_unary(MODEL_INFER, request_serializer=None)
        else:
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        try:
            call(message, timeout=120)
        except grpc.RpcError as error:
            return error.code().name
    return "OK"


def grpc_message(model: str, name: str, datatype: str, shape: list[int], raw: bytes):
    message = service_pb2.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype=datatype, shape=shape)
    message.raw_input_contents.append(raw)
    return message


@functools.cache
def bytes_elements_message(model: str, count: int) -> bytes:
    """``count`` zero-length BYTES elements declared for ``image``, serialised."""
    raw = bytes(4 * count)
    return grpc_message(model, "image", "BYTES", [count], raw).SerializeToString()


def grpc_elements(target: Target, stop: threading.Event) -> str:
    """4 million zero-length BYTES elements for ``image``: 16 MB, under the body limit."""
    return grpc_call(target, bytes_elements_message(target.model, 4_000_000))


def grpc_elements_over(target: Target, stop: threading.Event) -> str:
    """20 million zero-length BYTES elements: the issue's 80 MB message, over the limit."""
    return grpc_call(target, bytes_elements_message(target.model, 20_000_000))


@functools.cache
def failing_message() -> bytes:
    """19 MB of frames for a model the server does not serve: read, then refused (404)."""
    frames = [1, 1500, 4400, 3]
    raw = bytes(int(np.prod(frames)))
    return grpc_message("no-such-model", "pixels", "UINT8", frames, raw).SerializeToString()


def grpc_failures(target: Target, stop: threading.Event) -> str:
    return grpc_call(target, failing_message())


def _trickle(target: Target, stop: threading.Event, head: bytes, then: bytes, every_s: float):
    """Sends ``head``, then a byte of ``then`` every ``every_s`` until the server answers or
    closes (its status, and "closed"), or ``stop``."""
    with target.connect() as sock:
        sock.sendall(head)
        sock.settimeout(every_s)
        index = 0
        while not stop.is_set():
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                sock.send(then[index % len(then) : index % len(then) + 1])
                index += 1
                continue
            return f"{answer[9:12].decode() or 'EOF'} closed" if answer else "EOF closed"
    return "stopped"


def slow_headers(target: Target, stop: threading.Event) -> str:
    head = b"POST /predict HTTP/1.1\r\nHost: a\r\n"
    return _trickle(target, stop, head, b"X-Slow: 1\r\n", 0.5)


def slow_bodies(target: Target, stop: threading.Event) -> str:
    head = b"POST /predict HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n"
    return _trickle(target, stop, head, b"\x89", 1.0)


STALLED_BYTES = 20 * 2**20


def stalled_bodies(target: Target, stop: threading.Event) -> str:
    """Declares 20 MiB, sends all but its last byte, and waits."""
    head = f"POST /predict HTTP/1.1\r\nHost: a\r\nContent-Length: {STALLED_BYTES}\r\n\r\n"
    with target.connect() as sock:
        sock.settimeout(1.0)
        pending = memoryview(head.encode() + bytes(STALLED_BYTES - 1))
        while pending and not stop.is_set():
            try:
                pending = pending[sock.send(pending) :]
            except TimeoutError:
                continue
        return _wait_answer(sock, stop)


def _wait_answer(sock: socket.socket, stop: threading.Event) -> str:
    while not stop.is_set():
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return "reset"
        return f"{answer[9:12].decode()} closed" if answer else "EOF closed"
    return "stopped"


NPZ_SIDE = 1024


@functools.cache
def npz_request() -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (NPZ_SIDE // 16, NPZ_SIDE // 16, 3), np.uint8)
    image = Image.fromarray(small).resize((NPZ_SIDE, NPZ_SIDE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    body = buffer.getvalue()
    head = (
        "POST /predict?tasks=normals&format=npz HTTP/1.1\r\nHost: a\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def non_reading(target: Target, stop: threading.Event) -> str:
    """Asks for 12.6 MB of float32 normals as npz and reads none of it."""
    with target.connect(receive_buffer=4096) as sock:
        sock.sendall(npz_request())
        while not stop.wait(0.2):
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):  # reset by the server
                return "dropped"
    return "stopped"


@functools.cache
def png_bomb() -> bytes:
    return png_bytes(6000, 6000)  # 105 KB that decode to 36 megapixels


def png_bombs(target: Target, stop: threading.Event) -> str:
    request = http_request("/predict", png_bomb(), {"Content-Type": "image/png"})
    return raw_request(target, request)


ATTACKS = {
    attack.name: attack
    for attack in (
        Attack(
            "tasks_query", "POST /predict?tasks=semseg,... (12000 names, 84 KB)", 2, tasks_query
        ),
        Attack(
            "v2_bytes", "V2 REST: 20 KB gzip body of 5M zero-length BYTES", 2, v2_bytes_elements
        ),
        Attack("grpc_elements", "gRPC: 16 MB message of 4M BYTES elements", 2, grpc_elements),
        Attack(
            "grpc_elements_over",
            "gRPC: 80 MB message of 20M BYTES elements (over --max-body-bytes)",
            2,
            grpc_elements_over,
        ),
        Attack("slow_headers", "60 connections trickling header bytes", 60, slow_headers),
        Attack("slow_bodies", "20 bodies at 1 byte/s", 20, slow_bodies),
        Attack("stalled_bodies", "20 bodies stalled after 20 MiB - 1", 20, stalled_bodies),
        Attack("non_reading", "12 npz clients reading nothing", 12, non_reading, 8.0),
        Attack("png_bombs", "6 x 6000x6000 PNGs (105 KB each)", 6, png_bombs),
        Attack("grpc_failures", "gRPC: 19 MB calls that fail, one after another", 1, grpc_failures),
    )
}


def victim_loop(target: Target, body: bytes, log: Log, stop: threading.Event) -> list[float]:
    """``POST /predict?tasks=semseg`` of ``body`` back to back until ``stop``: each latency (s),
    each outcome logged as the victim's."""
    latencies = []
    with httpx.Client(base_url=target.url, timeout=SOCKET_TIMEOUT_S) as client:
        while not stop.is_set():
            started = time.perf_counter()
            answer = client.post(
                "/predict",
                params={"tasks": "semseg"},
                content=body,
                headers={"Content-Type": "image/png"},
            )
            latencies.append(time.perf_counter() - started)
            log.add("victim", str(answer.status_code))
    return latencies
