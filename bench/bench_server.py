"""Server latency and throughput against the model alone, on loopback only.

    .venv/bin/python -m bench.bench_server --model-dir demo/model [--image 4032x3024]
        [--size upload|model] [--format json|npz] [--concurrency 1,4,16] [--requests 64]

Starts ``python -m server`` on 127.0.0.1 (or uses ``--url``), sends one photo-like JPEG of
``--image`` (width x height; ``bench/images.py``) for all five tasks at each concurrency (each
level bounded by ``--requests`` and ``--seconds``), and times the ORT session in-process on the
same preprocessed input. The load client is a bare keep-alive HTTP/1.1 connection
(``Connection``), so that the client's own CPU time stays small on the cores it shares with the
server.

At concurrency 1 each request alternates with one in-process run of the model (A, B, A, B, ...),
so both see the same machine, and the overhead is reported three ways (p50 each):
``client``: (round trip - model alone) / model alone: everything between the client's send and
its last byte, HTTP included. ``server``: (``Server-Timing`` total - model alone) / model
alone: from the request's arrival in the handler to the response built. ``in_request``:
(total - inference) / inference, both from the same responses' ``Server-Timing``: the server's
own work against the model call it made, immune to the machine getting faster or slower.
``times_model`` says the same as ratios (round trip / model alone, total / model alone), the
form of issue 12's camera-size targets.
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
import time
from pathlib import Path

import httpx
import numpy as np

from bench.images import parse_size, photo_jpeg
from server.codecs import decode_image
from server.modeldir import load_model_dir
from server.pipeline import preprocess
from server.runtime import SPIN_CONFIG, ModelRuntime

REPO = Path(__file__).resolve().parents[1]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}


class ModelAlone:
    """The ORT session in this process on the request's preprocessed image: the reference."""

    def __init__(self, model_dir: Path, body: bytes, threads: int, spin: str) -> None:
        model = load_model_dir(model_dir)
        self.runtime = ModelRuntime(model, ["CPUExecutionProvider"], threads, spin)
        self.image = preprocess(decode_image(body, 10**9), model)[None]  # (1, 3, H, W)
        self.task_ids = np.array([t.id for t in model.tasks], np.int64)
        self.streams = np.zeros(len(self.task_ids), np.int64)
        self.times: list[float] = []
        self.cpu_s = 0.0  # this process's CPU time inside the runs (not the client's)
        for _ in range(3):  # warm-up
            self.runtime.run(self.image, self.streams, self.task_ids)

    def run_once(self) -> None:
        started, cpu = time.perf_counter(), time.process_time()
        self.runtime.run(self.image, self.streams, self.task_ids)
        self.times.append(time.perf_counter() - started)
        self.cpu_s += time.process_time() - cpu


def server_timing(header: str) -> dict[str, float]:
    """``"decode;dur=1.2, total;dur=20.1"`` -> ``{"decode": 1.2, "total": 20.1}`` (ms)."""
    spans = (part.strip().split(";dur=") for part in header.split(",") if ";dur=" in part)
    return {name: float(value) for name, value in spans}


class Connection:
    """A bare HTTP/1.1 keep-alive client: one POST at a time, the body read by Content-Length
    or, for streamed responses (npz), by its chunks.

    httpx spends 3-4 ms of CPU per 36 KB JSON response (measured here, 2026-11-29), on the same
    two cores as the server; this reads the bytes and parses only the status and headers.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(self, target: str, body: bytes, content_type: str) -> tuple[int, dict, bytes]:
        head = (
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        headers = {}
        for line in filter(None, lines):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            payload = await self._chunks()
        else:
            payload = await self.reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), headers, payload

    async def _chunks(self) -> bytes:
        """A chunked body: hex size line, data, CRLF, ... until the zero-size chunk (no
        trailers: the server sends none)."""
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        await self.reader.readuntil(b"\r\n")
        return b"".join(parts)

    def close(self) -> None:
        self.writer.close()


async def load_level(
    url: str,
    body: bytes,
    concurrency: int,
    requests: int,
    seconds: float,
    model: ModelAlone | None = None,
    target: str = "/predict",
    server_pid: int | None = None,
):
    """One concurrency level; with ``model`` (concurrency 1), one model run before each request."""
    latencies, spans, payload_sizes, give_up = [], [], [], time.monotonic() + seconds
    budget = iter(range(requests))

    async def client_loop() -> None:
        connection = await Connection.open(url)
        try:
            for _ in budget:
                if time.monotonic() > give_up:
                    return
                if model is not None:
                    model.run_once()
                started = time.perf_counter()
                status, headers, payload = await connection.post(target, body, "image/jpeg")
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise SystemExit(f"HTTP {status}: {payload[:300]!r}")
                spans.append(server_timing(headers.get("server-timing", "")))
                payload_sizes.append(len(payload))
        finally:
            connection.close()

    started, client_cpu = time.perf_counter(), time.process_time()
    server_cpu = process_cpu_s(server_pid)
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall, client_cpu = time.perf_counter() - started, time.process_time() - client_cpu
    if server_cpu is not None:
        server_cpu = round((process_cpu_s(server_pid) - server_cpu) * 1000 / len(latencies), 1)
    client_cpu -= model.cpu_s if model is not None else 0.0
    throughput = round(len(latencies) / wall, 2)
    names = spans[0] if spans else {}
    inside = {name: round(float(np.median([s[name] for s in spans])), 2) for name in names}
    own_work = [(s["total"] - s["inference"]) / s["inference"] for s in spans]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "throughput_rps": throughput,
        **percentiles(latencies),
        "server_timing_p50_ms": inside,
        "in_request_overhead_p50": round(float(np.median(own_work)), 3),
        "response_bytes": int(np.median(payload_sizes)),
        "client_cpu_ms_per_request": round(client_cpu * 1000 / len(latencies), 2),
        "server_cpu_ms_per_request": server_cpu,
    }


def process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; else ``None``): a
    steadier measure of the server's work than its latency on a shared machine."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def overheads(first: dict, model_p50: float) -> dict[str, float]:
    """Concurrency 1's overhead against the model alone, three ways (module docstring)."""
    total = first["server_timing_p50_ms"]["total"]
    return {
        "client": round((first["p50"] - model_p50) / model_p50, 3),
        "server": round((total - model_p50) / model_p50, 3),
        "in_request": first["in_request_overhead_p50"],
        "times_model": {
            "client": round(first["p50"] / model_p50, 2),
            "server": round(total / model_p50, 2),
        },
    }


def start_server(model_dir: Path, threads: int, spin: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "server",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--providers",
        "cpu",
        "--threads",
        str(threads),
        "--log-level=warning",
        "--ort-spin",
        spin,
    ]
    process = subprocess.Popen(command, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.terminate()
    raise SystemExit("server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "demo" / "model")
    parser.add_argument("--url", help="an already running server on loopback")
    parser.add_argument("--server-pid", type=int, help="its process, for its CPU time (Linux)")
    parser.add_argument("--requests", type=int, default=64, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=20.0, help="longest time per level")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads")
    parser.add_argument("--ort-spin", default="brief", choices=SPIN_CONFIG, help="see runtime.py")
    parser.add_argument("--image", default="640x480", help="width x height of the JPEG")
    parser.add_argument("--size", default="upload", choices=("upload", "model"), help="maps'")
    parser.add_argument("--max-side", type=int, help="maps' longest side (query max_side)")
    parser.add_argument("--format", default="json", choices=("json", "npz"))
    parser.add_argument(
        "--concurrency", default="1,4,16", help="levels; the first alternates with the model alone"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--random-model",
        choices=("vits",),
        help="serve a random-weight ASE ViT-S/16 224 export instead of --model-dir (needs torch)",
    )
    args = parser.parse_args()
    if args.random_model:
        with tempfile.TemporaryDirectory() as workdir:
            args.model_dir = export_random_model(args.random_model, Path(workdir))
            return run(args)
    return run(args)


def export_random_model(size: str, workdir: Path) -> Path:
    """A model directory as big as a real one (``SIZES`` of bench/models.py), weights random:
    the server's time per request does not depend on the weights' values."""
    from bench.models import SIZES, random_model
    from export.to_onnx import export_model_dir

    return export_model_dir(random_model(SIZES[size], "ase"), workdir / size, dispatch="auto")


def predict_target(args: argparse.Namespace) -> str:
    """``/predict`` with the query the flags ask for (all tasks: none named)."""
    query = {"format": args.format, "size": args.size, "max_side": args.max_side}
    defaults = {"format": "json", "size": "upload", "max_side": None}
    asked = [f"{k}={v}" for k, v in query.items() if v != defaults[k]]
    return "/predict" + ("?" + "&".join(asked) if asked else "")


def run(args: argparse.Namespace) -> None:
    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        raise SystemExit("loopback only: --url must be http://127.0.0.1:PORT")
    body = photo_jpeg(*parse_size(args.image))
    model = ModelAlone(args.model_dir, body, args.threads, args.ort_spin)
    process, url = (
        (None, args.url) if args.url else start_server(args.model_dir, args.threads, args.ort_spin)
    )
    pid = process.pid if process else args.server_pid
    target = predict_target(args)
    first, *others = (int(level) for level in args.concurrency.split(","))
    try:
        levels = [
            asyncio.run(
                load_level(url, body, first, args.requests, args.seconds, model, target, pid)
            )
        ]
        levels += [
            asyncio.run(load_level(url, body, c, args.requests, args.seconds, None, target, pid))
            for c in others
        ]
    finally:
        if process:
            process.terminate()
            process.wait(timeout=30)
    alone = percentiles(model.times)
    overhead = overheads(levels[0], alone["p50"])
    model_name = f"random {args.random_model}" if args.random_model else str(args.model_dir)
    model_cpu = round(model.cpu_s * 1000 / len(model.times), 1)
    results = {
        "model": model_name,
        "image": args.image,
        "jpeg_bytes": len(body),
        "query": target,
        "model_alone_ms": alone,
        "model_alone_cpu_ms_per_run": model_cpu,
        "server": levels,
        "overhead_at_c1": overhead,
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
