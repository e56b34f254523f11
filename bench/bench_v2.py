"""Our server against a real Triton on the same model, images and client (docs/benchmarks.md):

    make triton-venv
    .venv/bin/python -m bench.bench_v2 --model-dir demo/model --image 128x128 --image 480x640 \\
        --concurrency 1,4,16 --rounds 4 --requests 64 [--protocol http|grpc] [--out FILE]

Starts both on 127.0.0.1: ``python -m server`` on the model directory (REST and gRPC; its
defaults but for ``--server-flags``) and bench/triton_reference.py in .venv-triton (tritonserver
2.51, its Python backend running the same stages and ONNX Runtime on the same graph;
``--triton-instances`` model instances in parallel, ``--triton-threads`` ORT threads each). The
client is tritonclient 2.73 with binary tensors: one photo-like JPEG of each ``--image``
(``bench/images.py``) as the BYTES input ``image``, every task output requested (maps at the
upload's size). At each concurrency c, A/B alternating rounds (ours then Triton, then Triton
then ours, ...): a round is ``--requests`` calls from c client threads, each with its own
tritonclient (the sync clients: geventhttpclient for REST, grpcio), sending back to back once
all are connected. Per round: latency p50 and p99 (client side, send to the last byte parsed)
and throughput (calls / the round's wall time). Printed: per image and c, each server's median
over its rounds, and the median of the per-round ratios ours / Triton. ``--encoding``: only
the time to build a response from its computed maps, in this process (REST body, gRPC bytes,
protobuf's serialisation).

(The asyncio REST client, tritonclient.http.aio over aiohttp, is not used: against Triton's
HTTP server it took 268 ms p50 per 480x640 call where the sync client took 48 ms, a cost of that
client with that server, not of either server; docs/benchmarks.md.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bench.images import parse_size, photo_jpeg
from server.modeldir import load_model_dir

REPO = Path(__file__).resolve().parent.parent
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"
MESSAGE = 512 * 2**20
# gRPC channels of one process with the same target and options share one connection (the
# global subchannel pool): a local pool gives each client thread its own, as REST's have.
OWN_CHANNEL = [
    ("grpc.max_receive_message_length", MESSAGE),
    ("grpc.max_send_message_length", MESSAGE),
    ("grpc.use_local_subchannel_pool", 1),
]
READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """One server process on 127.0.0.1 with its REST and gRPC addresses."""

    def __init__(self, name: str, command: list[str], http: int, grpc: int, log: Path) -> None:
        self.name, self.http, self.grpc = name, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
        self.log = log
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, model: str) -> None:
        give_up = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                with httpclient.InferenceServerClient(self.http) as client:
                    if client.is_model_ready(model):
                        return
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # both stop on SIGTERM (Triton with its backend stub)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()


def start_servers(args: argparse.Namespace, logs: Path) -> list[Served]:
    ours_http, ours_grpc, triton_http, triton_grpc = (free_port() for _ in range(4))
    ours_command = [
        sys.executable,
        "-m",
        "server",
        "--model-dir",
        str(args.model_dir),
        "--port",
        str(ours_http),
        "--grpc-port",
        str(ours_grpc),
        "--providers",
        "cpu",
        "--log-level",
        "warning",
        *args.server_flags.split(),
    ]
    triton_command = [
        str(TRITON_PYTHON),
        "-m",
        "bench.triton_reference",
        "--model-dir",
        str(args.model_dir),
        "--http-port",
        str(triton_http),
        "--grpc-port",
        str(triton_grpc),
        "--instances",
        str(args.triton_instances),
        "--threads",
        str(args.triton_threads),
    ]
    return [
        Served("ours", ours_command, ours_http, ours_grpc, logs / "ours.log"),
        Served("triton", triton_command, triton_http, triton_grpc, logs / "triton.log"),
    ]


class Caller:
    """One client thread's tritonclient (its own connection) and the request it sends again
    and again. Made in the thread that uses it: the HTTP client's gevent hub is per thread."""

    def __init__(self, protocol: str, server: Served, model: str, image: bytes, tasks) -> None:
        module = grpcclient if protocol == "grpc" else httpclient
        self.model = model
        if protocol == "grpc":
            self.client = grpcclient.InferenceServerClient(server.grpc, channel_args=OWN_CHANNEL)
        else:
            self.client = httpclient.InferenceServerClient(server.http, network_timeout=300)
        binary = {} if module is grpcclient else {"binary_data": True}
        tensor = module.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=object), **binary)
        self.inputs = [tensor]
        self.outputs = [module.InferRequestedOutput(name, **binary) for name in tasks]

    def call(self) -> float:
        """One request; its latency in seconds (send to the response read and parsed)."""
        started = time.perf_counter()
        result = self.client.infer(self.model, self.inputs, outputs=self.outputs)
        for output in self.outputs:
            result.as_numpy(output.name())
        return time.perf_counter() - started


def run_round(args, server: Served, model, image: bytes, concurrency: int, requests: int):
    """``requests`` calls from ``concurrency`` threads, each calling back to back once all are
    connected; latency p50, p99 (ms) and throughput (calls / s)."""
    left, lock, latencies = [requests], threading.Lock(), []
    start = threading.Barrier(concurrency + 1)

    def work() -> None:
        caller = Caller(args.protocol, server, model.name, image, model.task_names)
        caller.call()  # connected, and the first call's set-up out of the round
        start.wait()
        while True:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
            latencies.append(caller.call())
        caller.client.close()

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "throughput": requests / wall,
    }


def compare_level(args, servers: list[Served], model, image: bytes, concurrency: int) -> dict:
    """A/B alternating rounds at one concurrency; per server its rounds' results."""
    rounds: dict[str, list[dict]] = {s.name: [] for s in servers}
    for server in servers:  # warm: code paths and caches hot
        run_round(args, server, model, image, concurrency, max(args.warmup, concurrency))
    for index in range(args.rounds):
        order = servers if index % 2 == 0 else servers[::-1]
        for server in order:
            rounds[server.name].append(
                run_round(args, server, model, image, concurrency, args.requests)
            )
    return rounds


def summary(rounds: dict[str, list[dict]]) -> dict:
    """Each server's median over rounds, and the median of per-round ratios ours / Triton."""
    ours, triton = rounds["ours"], rounds["triton"]
    keys = ("p50", "p99", "throughput")
    result = {
        name: {k: round(float(np.median([r[k] for r in rs])), 2) for k in keys}
        for name, rs in rounds.items()
    }
    result["ratio"] = {
        k: round(float(np.median([a[k] / b[k] for a, b in zip(ours, triton, strict=True)])), 3)
        for k in keys
    }
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| image | c | ours p50 | Triton p50 | ours p99 | Triton p99 | ours req/s | "
        "Triton req/s | p50 ours/Triton | req/s ours/Triton |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        ours, triton, ratio = r["ours"], r["triton"], r["ratio"]
        lines.append(
            f"| {r['image']} | {r['concurrency']} | {ours['p50']:.1f} | {triton['p50']:.1f} | "
            f"{ours['p99']:.1f} | {triton['p99']:.1f} | {ours['throughput']:.1f} | "
            f"{triton['throughput']:.1f} | {ratio['p50']:.2f} | {ratio['throughput']:.2f} |"
        )
    return "\n".join(lines)


def time_encoding(args: argparse.Namespace, width: int, height: int) -> dict[str, float]:
    """In this process, no client: one photo's response built from its computed maps, every
    task output, p50 ms over ``--requests`` builds: the REST body (JSON header and the tensors
    joined), the gRPC bytes ModelInfer sends, and protobuf's own serialisation of that message
    (what gRPC would otherwise do: three copies of every tensor)."""
    from server.settings import Settings
    from server.state import load_state, warm_up
    from server.v2 import grpc_wire, interface, rest, serving
    from server.v2.tensors import RequestedOutput, WireRequest, WireTensor

    state = load_state(Settings(model_dir=args.model_dir, providers="cpu", threads=1))
    warm_up(state)
    image = photo_jpeg(width, height)
    inputs = (WireTensor("image", "BYTES", (1,), np.array([image], dtype=object)),)
    outputs = tuple(RequestedOutput(n, {"binary_data": True}) for n in state.model.task_names)
    checked = interface.infer_request(
        WireRequest(state.model.name, "", None, inputs, outputs), state.model
    )

    async def frame():
        state.batcher.start()
        ask = serving.map_request(checked, serving.REST_MAP_COPIES)
        prediction = await state.pipeline.predict(image, ask, time.monotonic() + 60, _never)
        computed = await serving._frame(state, prediction)
        await state.batcher.stop(10)
        return computed

    computed = asyncio.run(frame())
    forms = {
        "rest_body": lambda r: rest.encode_response(r),
        "grpc_bytes": lambda r: grpc_wire.infer_response_bytes(r),
        "grpc_protobuf": lambda r: grpc_wire.to_infer_response(r).SerializeToString(),
    }
    times = {name: [] for name in forms}
    for _ in range(args.requests):
        for name, form in forms.items():
            started = time.perf_counter()
            form(interface.infer_response(checked, state.model, [computed]))
            times[name].append((time.perf_counter() - started) * 1000)
    state.render_pool.shutdown()
    return {name: round(float(np.median(ms)), 2) for name, ms in times.items()}


async def _never() -> None:
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "demo" / "model")
    parser.add_argument(
        "--image", action="append", help="WxH (repeatable); default 128x128, 480x640"
    )
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per server and level")
    parser.add_argument("--requests", type=int, default=64, help="calls per round")
    parser.add_argument("--warmup", type=int, default=8, help="untimed calls per server, level")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--server-flags", default="", help="more flags for python -m server")
    parser.add_argument("--triton-instances", type=int, default=1)
    parser.add_argument("--triton-threads", type=int, default=0, help="ORT threads (0: all)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--encoding",
        action="store_true",
        help="only time building the responses in this process (time_encoding), each --image",
    )
    args = parser.parse_args()
    model = load_model_dir(args.model_dir)
    images = [parse_size(text) for text in (args.image or ["128x128", "480x640"])]
    if args.encoding:
        for width, height in images:
            print(f"{width}x{height}", json.dumps(time_encoding(args, width, height)), flush=True)
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as logs:
        servers = start_servers(args, Path(logs))
        try:
            for server in servers:
                server.wait_ready(model.name)
            for width, height in images:
                image = photo_jpeg(width, height)
                for concurrency in levels:
                    rounds = compare_level(args, servers, model, image, concurrency)
                    entry = {
                        "image": f"{width}x{height}",
                        "concurrency": concurrency,
                        **summary(rounds),
                        "rounds": rounds,
                    }
                    print(json.dumps({k: v for k, v in entry.items() if k != "rounds"}), flush=True)
                    results.append(entry)
        finally:
            for server in servers:
                server.stop()
    print(table(results))
    if args.out:
        settings = {key: str(value) for key, value in vars(args).items()}
        args.out.write_text(json.dumps({"args": settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
