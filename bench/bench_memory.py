"""Memory under a burst of camera-size requests: idle, peak and settled RSS of a real server.

    .venv/bin/python -m bench.bench_memory [--model-dir demo/model] [--image 7200x5400]
        [--burst 16] [--budget-mb 1500] [--queue 4] [--format npz] [--rounds 1]

Starts ``python -m server`` for each allocator variant in turn (glibc's default; 2 arenas;
a fixed mmap threshold; ``malloc_trim`` once idle, the server's default: server/heap.py),
warms it with two small requests, resets the kernel's peak-RSS mark, sends ``--burst``
concurrent uploads of a smooth photo-like JPEG and reads every answer to its end, then samples
RSS for 30 s. Prints one JSON row per variant.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from model.data.synthetic import render, sample_scene

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {
    "glibc_default": ({"MALLOC_ARENA_MAX": ""}, ["--return-freed-memory", "never"]),
    "arena_max_2": ({"MALLOC_ARENA_MAX": "2"}, ["--return-freed-memory", "never"]),
    "fixed_mmap_threshold": ({}, ["--return-freed-memory", "always"]),
    "trim_when_idle": ({}, ["--return-freed-memory", "idle"]),
}
SETTLE_S = (1, 5, 10, 20, 30)


def photo_jpeg(width: int, height: int) -> bytes:
    """A smooth, photo-like scene (not noise): a rendered synthetic scene, enlarged, with grain."""
    scene = render(sample_scene(np.random.default_rng(0)), 270, 480).image
    big = np.asarray(Image.fromarray(scene).resize((width, height), Image.Resampling.BICUBIC))
    grain = np.random.default_rng(1).integers(-3, 4, big.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def rss(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) << 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def burst(url: str, body: bytes, count: int, query: dict) -> list[int]:
    async def one(client: httpx.AsyncClient) -> int:
        headers = {"Content-Type": "image/jpeg"}
        async with client.stream(
            "POST", "/predict", params=query, content=body, headers=headers
        ) as answer:
            async for _ in answer.aiter_raw(1 << 20):
                pass
            return answer.status_code

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return await asyncio.gather(*(one(client) for _ in range(count)))


def start(args, env_extra: dict, flags: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, **env_extra}
    env = {k: v for k, v in env.items() if v != ""}
    command = [
        sys.executable,
        "-m",
        "server",
        "--model-dir",
        str(args.model_dir),
        "--port",
        str(port),
        "--providers",
        "cpu",
        "--memory-budget-mb",
        str(args.budget_mb),
        "--max-queue",
        str(args.queue),
        "--timeout-s",
        "600",
        "--log-level",
        "warning",
        *flags,
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not become ready")


def measure(args, name: str, body: bytes, small: bytes) -> dict:
    env_extra, flags = VARIANTS[name]
    process, url = start(args, env_extra, flags)
    try:
        asyncio.run(burst(url, small, 2, {"format": args.format}))
        idle = rss(process.pid)
        with open(f"/proc/{process.pid}/clear_refs", "w") as handle:
            handle.write("5")  # the kernel's peak-RSS mark starts again from here
        started = time.monotonic()
        statuses = asyncio.run(burst(url, body, args.burst, {"format": args.format}))
        seconds = time.monotonic() - started
        peak = rss(process.pid, "VmHWM")
        settled, waited = {}, 0
        for mark in SETTLE_S:
            time.sleep(mark - waited)
            waited = mark
            settled[f"{mark}s"] = rss(process.pid) >> 20
        return {
            "variant": name,
            "statuses": dict(Counter(statuses)),
            "burst_s": round(seconds, 1),
            "idle_mib": idle >> 20,
            "peak_mib": peak >> 20,
            "after_mib": settled,
            "after_30s_over_idle": round(rss(process.pid) / idle - 1, 3),
        }
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "demo" / "model")
    parser.add_argument("--image", default="7200x5400")
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--budget-mb", type=int, default=1500)
    parser.add_argument("--queue", type=int, default=4)
    parser.add_argument("--format", default="npz")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    width, height = (int(v) for v in args.image.split("x"))
    body, small = photo_jpeg(width, height), photo_jpeg(640, 480)
    print(
        json.dumps(
            {
                "image": args.image,
                "jpeg_bytes": len(body),
                "burst": args.burst,
                "budget_mib": args.budget_mb,
                "format": args.format,
            }
        )
    )
    for _ in range(args.rounds):
        for name in args.variants.split(","):
            print(json.dumps(measure(args, name, body, small)), flush=True)


if __name__ == "__main__":
    main()
