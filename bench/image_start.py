"""Time to ready of the serving image: with the map kernels it compiled at build, and without.

    .venv/bin/python -m bench.image_start [--image ase-serve:0.1.0-cpu] [--runs 5]

Starts a container of the image (``docker run -d``, its own command, a free port on 127.0.0.1)
and polls ``/readyz`` every 50 ms until it answers 200; the time from ``docker run`` to that
answer is one sample, and the server's own "warmed up in" line another. Alternates two ways:

- ``precompiled``: the image as built; numba loads the kernels the build left in
  NUMBA_CACHE_DIR (/tmp/numba-cache);
- ``compiled_at_start``: a tmpfs over /tmp, as Kubernetes' emptyDir in deploy/ mounts one: the
  cache starts empty and numba compiles the kernels during the warm-up (what every start costs
  with a writable cache directory alone, and on a CPU of another kind than the build's).

Prints one JSON row per way: every sample, and the medians. Needs a running Docker engine
and the image (``docker compose build server``).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import time

import httpx

DOCKER = "/usr/bin/docker"
WAYS = {"precompiled": [], "compiled_at_start": ["--tmpfs", "/tmp:exec,mode=1777"]}
READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def docker(*args: str) -> str:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=True).stdout


def time_to_ready(image: str, flags: list[str]) -> tuple[float, float]:
    """(seconds from `docker run` to /readyz 200, the server's own warm-up seconds)."""
    port = free_port()
    started = time.perf_counter()
    container = docker("run", "-d", "-p", f"127.0.0.1:{port}:8000", *flags, image).strip()
    try:
        while time.perf_counter() - started < READY_TIMEOUT_S:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    ready = time.perf_counter() - started
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise TimeoutError(f"{image} {flags}: not ready in {READY_TIMEOUT_S} s")
        logs = subprocess.run([DOCKER, "logs", container], capture_output=True, text=True)
        warm = float(re.search(r"warmed up in ([\d.]+) s", logs.stdout + logs.stderr)[1])
        return ready, warm
    finally:
        docker("rm", "-f", container)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default="ase-serve:0.1.0-cpu")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    samples = {way: [] for way in WAYS}
    for _ in range(args.runs):  # A/B alternating: drift on a shared machine hits both alike
        for way, flags in WAYS.items():
            samples[way].append(time_to_ready(args.image, flags))
    for way, runs in samples.items():
        ready, warm = ([round(run[i], 2) for run in runs] for i in (0, 1))
        medians = {
            "median_ready_s": statistics.median(ready),
            "median_warm_up_s": statistics.median(warm),
        }
        print(json.dumps({"way": way, "ready_s": ready, "warm_up_s": warm} | medians))


if __name__ == "__main__":
    main()
