"""Server latency and throughput against the model alone, on loopback only.

    .venv/bin/python bench/bench_server.py --model-dir demo/model [--requests 64] [--seconds 20]

Starts ``python -m server`` on 127.0.0.1 (or uses ``--url``), sends one synthetic JPEG for all
five tasks at concurrency 1, 4 and 16 (each level bounded by ``--requests`` and ``--seconds``),
and times the ORT session in-process on the same preprocessed input. Server overhead at
concurrency 1 = (server p50 - model p50) / model p50: decoding, resizing, PNG encoding and HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.codecs import decode_image  # noqa: E402
from server.modeldir import load_model_dir  # noqa: E402
from server.runtime import ModelRuntime, preprocess  # noqa: E402


def synthetic_jpeg(height: int, width: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([np.sin(7 * x), np.cos(5 * y), np.sin(3 * (x + y))], -1)
    buffer = io.BytesIO()
    Image.fromarray(((rgb + 1) * 127.5).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}


def model_alone(model_dir: Path, body: bytes, threads: int, runs: int) -> dict[str, float]:
    model = load_model_dir(model_dir)
    runtime = ModelRuntime(model, ["CPUExecutionProvider"], threads)
    image = preprocess(decode_image(body, 10**9), model)[None]  # (1, 3, H, W)
    task_ids = np.array([t.id for t in model.tasks], np.int64)
    streams = np.zeros(len(task_ids), np.int64)
    runtime.run(image, streams, task_ids)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        runtime.run(image, streams, task_ids)
        times.append(time.perf_counter() - started)
    return percentiles(times)


async def load_level(url: str, body: bytes, concurrency: int, requests: int, seconds: float):
    latencies, give_up = [], time.monotonic() + seconds
    budget = iter(range(requests))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in budget:
            if time.monotonic() > give_up:
                return
            started = time.perf_counter()
            response = await client.post("/predict", content=body,
                                         headers={"Content-Type": "image/jpeg"})  # fmt: skip
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    throughput = round(len(latencies) / wall, 2)
    return {"concurrency": concurrency, "requests": len(latencies),
            "throughput_rps": throughput, **percentiles(latencies)}  # fmt: skip


def start_server(model_dir: Path, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "server", "--model-dir", str(model_dir), "--port", str(port),
               "--providers", "cpu", "--threads", str(threads), "--log-level=warning"]  # fmt: skip
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
    parser.add_argument("--requests", type=int, default=64, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=20.0, help="longest time per level")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads")
    parser.add_argument("--image", default="480x640", help="HxW of the synthetic JPEG")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        raise SystemExit("loopback only: --url must be http://127.0.0.1:PORT")
    height, width = (int(v) for v in args.image.split("x"))
    body = synthetic_jpeg(height, width)
    model = model_alone(args.model_dir, body, args.threads, runs=max(10, args.requests // 2))
    process, url = (None, args.url) if args.url else start_server(args.model_dir, args.threads)
    try:
        levels = [asyncio.run(load_level(url, body, c, args.requests, args.seconds))
                  for c in (1, 4, 16)]  # fmt: skip
    finally:
        if process:
            process.terminate()
            process.wait(timeout=30)
    overhead = (levels[0]["p50"] - model["p50"]) / model["p50"]
    results = {"image": args.image, "model_alone_ms": model, "server": levels,
               "overhead_at_c1": round(overhead, 3)}  # fmt: skip
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
