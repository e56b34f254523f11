"""Ray on one machine: Serve requests/s with one and two replicas, and predict-dataset images/s
plain and on Ray Data with one and two actors, on a local two-node Ray cluster (loopback only).

    .venv/bin/python -m bench.bench_ray [--model-dir demo/model] [--requests 300] \\
        [--images 400] [--rounds 3] [--json runs/ray.json]

The cluster is ``ray.cluster_utils.Cluster``: a head and a worker node as processes of their
own, 1 CPU each, one replica or actor per node (a custom resource pins replicas; actors of one
CPU each fit one per node). Serve's proxy runs on the head; the load (bench/bench_server.py's
bare keep-alive client: ``--concurrency`` connections, all five tasks of one photo-like JPEG of
``--image``, bench/images.py) goes to it and, for reference, to a plain ``python -m server``
with one ORT thread. Batch prediction writes every task's PNGs for ``--images`` copies of the
demo samples: plain (one model in this process, one ORT thread) and on Ray Data with an actor
pool of one and of two models (one ORT thread each). The variants run in turn, ``--rounds``
times; medians are reported (this machine's speed drifts).

Both nodes share this machine's two cores with the proxy, the client and Ray's own processes:
two replicas here compete for what two machines would each have alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.update(  # before ray is imported: see tests/server/ray_cluster.py
    RAY_USAGE_STATS_ENABLED="0",
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING="0",
)

from bench.bench_server import load_level, start_server
from bench.images import parse_size, photo_jpeg
from server.batch import Job, Outcome, list_images, run_here
from server.settings import Settings

REPO = Path(__file__).resolve().parents[1]

SLOT = "replica_slot"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cluster(temp_dir: Path):
    import ray
    from ray.cluster_utils import Cluster

    head = {
        "num_cpus": 1,
        "resources": {SLOT: 1},
        "temp_dir": str(temp_dir),
        "include_dashboard": False,
    }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    cluster.add_node(num_cpus=1, resources={SLOT: 1})
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def serve_replicas(settings: Settings, replicas: int) -> None:
    """The application with exactly ``replicas`` replicas, one per node. Only the count changes
    between calls, so Serve adds or removes replicas and keeps the others running."""
    from ray import serve

    from server.ray_app import APP_NAME, build_app, deployment_options

    options = deployment_options(settings)
    options["ray_actor_options"]["resources"] = {SLOT: 1}
    options["autoscaling_config"].update(
        min_replicas=replicas, max_replicas=replicas, initial_replicas=replicas
    )
    serve.run(build_app(settings, **options), name=APP_NAME, route_prefix="/")


def requests_per_s(url: str, body: bytes, args) -> float:
    asyncio.run(load_level(url, body, args.concurrency, 2 * args.concurrency, 60))  # warm-up
    return asyncio.run(load_level(url, body, args.concurrency, args.requests, 120))[
        "throughput_rps"
    ]


def serve_rounds(settings: Settings, args) -> dict[str, list[float]]:
    from ray import serve

    body = photo_jpeg(*parse_size(args.image))
    process, plain_url = start_server(settings.model_dir, 1, "brief")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    ray_url, results = f"http://127.0.0.1:{port}", {"plain": [], "ray_1": [], "ray_2": []}
    try:
        for _ in range(args.rounds):
            results["plain"].append(requests_per_s(plain_url, body, args))
            for replicas in (1, 2):
                serve_replicas(settings, replicas)
                results[f"ray_{replicas}"].append(requests_per_s(ray_url, body, args))
    finally:
        process.terminate()
        serve.shutdown()
    return results


def sample_dataset(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    samples = sorted((REPO / "demo" / "samples").glob("*.png"))
    for i in range(count):
        shutil.copy(samples[i % len(samples)], folder / f"{i:05d}.png")
    return folder


class Clock:
    """Outcomes' arrival times: the wall time of a run and its rate once the first map is out
    (model loading and, on Ray, the actor pool's start come before it)."""

    def __init__(self) -> None:
        self.started, self.times, self.failed = time.perf_counter(), [], 0

    def report(self, outcome: Outcome) -> None:
        self.times.append(time.perf_counter())
        self.failed += outcome.status != "written"

    def figures(self) -> dict[str, float]:
        first, last, count = self.times[0], self.times[-1], len(self.times)
        return {
            "images_per_s": count / (last - self.started),
            "after_first_images_per_s": (count - 1) / (last - first),
            "first_after_s": first - self.started,
            "failed": self.failed,
        }


def batch_run(settings: Settings, images, output: Path, actors: int) -> dict[str, float]:
    shutil.rmtree(output, ignore_errors=True)
    job, clock = Job(settings, output), Clock()
    if actors:
        from server.batch_ray import run_on_ray

        run_on_ray(job, images, "auto", actors, clock.report)
    else:
        asyncio.run(run_here(job, images, clock.report))
    return clock.figures()


def batch_rounds(settings: Settings, args, workdir: Path) -> dict[str, list[dict]]:
    images = list_images(sample_dataset(workdir / "images", args.images))
    results = {"plain": [], "ray_1": [], "ray_2": []}
    for _ in range(args.rounds):
        results["plain"].append(batch_run(settings, images, workdir / "out", 0))
        for actors in (1, 2):
            results[f"ray_{actors}"].append(batch_run(settings, images, workdir / "out", actors))
    return results


def medians(runs: dict[str, list], key: str | None = None) -> dict[str, float]:
    pick = (lambda run: run) if key is None else (lambda run: run[key])
    return {name: float(np.median([pick(run) for run in values])) for name, values in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "demo" / "model")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per variant")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--image", default="128x128", help="WxH of the photo-like JPEG")
    parser.add_argument("--images", type=int, default=400, help="images per batch run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    settings = Settings(
        model_dir=args.model_dir,
        providers="cpu",
        threads=1,
        render_threads=1,
        memory_budget_mb=1024,
        log_level="warning",
    )
    workdir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths
    # Cluster.add_node writes the head's address under Ray's default temp folder, which it
    # does not create: make that default ours (workdir/ray) rather than assume /tmp/ray exists.
    os.environ["RAY_TMPDIR"] = str(workdir)
    cluster = start_cluster(workdir / "ray")
    try:
        serve = serve_rounds(settings, args)
        batch = batch_rounds(settings, args, workdir)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "serve_requests_per_s": {"runs": serve, "median": medians(serve)},
        "batch": {
            "runs": batch,
            "median_images_per_s": medians(batch, "images_per_s"),
            "median_after_first_images_per_s": medians(batch, "after_first_images_per_s"),
        },
        "settings": {
            k: vars(args)[k] for k in ("requests", "concurrency", "image", "images", "rounds")
        },
    }
    text = json.dumps(report, indent=1, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
