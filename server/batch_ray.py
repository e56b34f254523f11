"""``predict-dataset --ray ADDRESS``: the images spread over a Ray cluster with Ray Data.

The image list becomes a dataset of (name, path) rows; ``map_batches`` hands batches of rows to
an actor pool whose every member holds one model (``ModelActor``: a server's state, as in the
plain run, CPU or GPU as ``ray_num_cpus`` / ``ray_num_gpus`` say). Each actor reads its images
and writes their maps itself, so INPUT and OUTPUT must be the same paths on every node (one
machine, or a shared file system); only the outcomes come back to this process, which counts
them.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable

import numpy as np
import ray
from ray import data

from server.batch import Image, Job, MapWriter, Outcome, running_state, write_all

ROWS_PER_CALL = 2
"""Images per actor call, in model batches: while one batch runs, the next is decoded."""
POOL_START_TIMEOUT_S = 600  # past it the cluster lacks the resources for the pool: say so


class ModelActor:
    """One model in a Ray actor: the server's state on an event loop in a thread of its own,
    kept for the actor's life; each call writes one batch of rows."""

    def __init__(self, job: Job) -> None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="ase-batch", daemon=True).start()
        self._running = running_state(job.settings, job.model_dir())
        state = self._wait(self._running.__aenter__())
        self._writer = MapWriter(state, job)

    def _wait(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, list[str]]:
        images = [Image(str(n), str(p)) for n, p in zip(rows["name"], rows["path"], strict=True)]
        outcomes: list[Outcome] = []
        self._wait(write_all(self._writer, images, outcomes.append))
        return {
            "name": [o.name for o in outcomes],
            "status": [o.status for o in outcomes],
            "message": [o.message for o in outcomes],
        }


def actors_that_fit(job: Job) -> int:
    """As many actors as the cluster's GPUs (or, on CPUs, its CPUs) hold, at least one."""
    settings, resources = job.settings, ray.cluster_resources()
    if settings.ray_num_gpus:
        return max(1, math.floor(resources.get("GPU", 0) / settings.ray_num_gpus))
    return max(1, math.floor(resources.get("CPU", 1) / settings.ray_num_cpus))


def run_on_ray(
    job: Job, images: list[Image], address: str, actors: int, report: Callable[[Outcome], None]
) -> None:
    """Every image through an actor pool of ``actors`` models (0: as many as fit)."""
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    context = data.DataContext.get_current()
    context.enable_progress_bars = False  # the command shows its own
    # Every model loaded before the first image is handed out: otherwise the first actor up
    # takes the first batches and a small run may finish on one.
    context.wait_for_min_actors_s = POOL_START_TIMEOUT_S
    if not images:
        return
    job = Job(
        job.settings.per_ray_actor(), job.output, job.tasks, job.format, job.model, job.version
    )
    rows_per_call = ROWS_PER_CALL * job.settings.max_batch
    rows = [{"name": image.name, "path": image.path} for image in images]
    dataset = data.from_items(rows, override_num_blocks=math.ceil(len(rows) / rows_per_call))
    outcomes = dataset.map_batches(
        ModelActor,
        fn_constructor_args=(job,),
        batch_size=rows_per_call,
        batch_format="numpy",
        compute=data.ActorPoolStrategy(size=actors or actors_that_fit(job)),
        num_cpus=job.settings.ray_num_cpus,
        num_gpus=job.settings.ray_num_gpus,
    )
    for batch in outcomes.iter_batches(batch_size=None, batch_format="numpy"):
        for name, status, message in zip(
            batch["name"], batch["status"], batch["message"], strict=True
        ):
            report(Outcome(str(name), str(status), str(message)))
