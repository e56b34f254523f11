"""What a running server holds, built once at start from the settings and the model directory.

Start-up order: read and check the model directory, open the ORT sessions (one per model
instance) on the graph chosen for the provider actually taken, the metrics, the batcher, the
memory budget and the render pool; ``warm_up`` then runs a full batch on each instance (and
compiles the map kernels) before the server says it is ready.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from server import maps
from server.batching import Batcher
from server.budget import MemoryBudget, auto_budget_bytes
from server.heap import heap_policy
from server.metrics import ServerMetrics
from server.modeldir import ModelDir, load_model_dir
from server.pipeline import Pipeline
from server.runtime import ModelRuntime
from server.settings import Settings

log = logging.getLogger("server.state")


@dataclass
class ServerState:
    settings: Settings
    model: ModelDir
    instances: list[ModelRuntime]  # one ORT session per model instance, all alike
    metrics: ServerMetrics
    batcher: Batcher
    budget: MemoryBudget
    pipeline: Pipeline
    render_pool: ThreadPoolExecutor  # restores and encodes the maps of responses
    ready: bool = False

    @property
    def runtime(self) -> ModelRuntime:
        """The first instance: its provider and graph are every instance's."""
        return self.instances[0]


def load_state(settings: Settings) -> ServerState:
    heap = heap_policy(settings.return_freed_memory)
    model = load_model_dir(settings.model_dir)
    instances = [
        ModelRuntime(model, settings.provider_list, settings.threads, settings.ort_spin)
        for _ in range(settings.instances)
    ]
    metrics = ServerMetrics(model, instances[0].provider)
    batcher = Batcher(
        [instance.run for instance in instances],
        model,
        metrics,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
    )
    budget = MemoryBudget(budget_bytes(settings), max_waiting=settings.max_queue, heap=heap)
    pipeline = Pipeline(model, batcher, budget, settings.max_pixels)
    render_pool = ThreadPoolExecutor(
        settings.render_threads or os.cpu_count() or 1, thread_name_prefix="ase-render"
    )
    log.info("memory budget for requests: %d MiB", budget.capacity >> 20)
    return ServerState(settings, model, instances, metrics, batcher, budget, pipeline, render_pool)


def budget_bytes(settings: Settings) -> int:
    if settings.memory_budget_mb:
        return settings.memory_budget_mb << 20
    return auto_budget_bytes(settings.workers)


def warm_up(state: ServerState) -> float:
    """A full batch with every task, and every map kernel once (compiled, or loaded from
    numba's cache), so that the first request pays neither."""
    started = time.perf_counter()
    for instance in state.instances:
        instance.warm_up(state.settings.max_batch)
    maps.compile_kernels()
    return time.perf_counter() - started
