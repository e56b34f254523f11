"""What a running server holds: ``Shared`` (the settings, the memory budget, the render pool, the
metric families: one each per server) and a ``ServerState`` per model version served, built
from a checked model directory (server/model_control.py loads and unloads them).

A version's start-up order: open the ORT sessions (one per model instance) on the graph chosen
for the provider actually taken, its metrics, its batcher and its pipeline; ``warm_up`` then runs
a full batch on each instance (and compiles the map kernels) before it takes requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from server import maps
from server.batching import Batcher
from server.budget import MemoryBudget, auto_budget_bytes, memory_limit_bytes
from server.heap import heap_policy
from server.metrics import MetricFamilies, ServerMetrics
from server.modeldir import ModelDir
from server.pipeline import Pipeline
from server.repository import pick_model
from server.runtime import ModelRuntime
from server.settings import Settings

log = logging.getLogger("server.state")


@dataclass
class Shared:
    """One per server, whatever the models: requests of every version reserve from one memory
    budget and encode in one render pool; every version's series are on one registry."""

    settings: Settings
    budget: MemoryBudget
    render_pool: ThreadPoolExecutor  # restores and encodes the maps of responses
    metrics: MetricFamilies


def load_shared(settings: Settings) -> Shared:
    heap = heap_policy(settings.return_freed_memory)
    budget = MemoryBudget(budget_bytes(settings), max_waiting=settings.max_queue, heap=heap)
    render_pool = ThreadPoolExecutor(
        settings.render_threads or os.cpu_count() or 1, thread_name_prefix="ase-render"
    )
    log.info("memory budget for requests: %d MiB", budget.capacity >> 20)
    return Shared(settings, budget, render_pool, MetricFamilies())


@dataclass
class ServerState:
    """One model version being served."""

    settings: Settings
    model: ModelDir
    instances: list[ModelRuntime]  # one ORT session per model instance, all alike
    metrics: ServerMetrics
    batcher: Batcher
    budget: MemoryBudget
    pipeline: Pipeline
    render_pool: ThreadPoolExecutor  # restores and encodes the maps of responses
    ready: bool = False
    in_flight: int = 0  # requests that chose this version and have not finished
    _idle: asyncio.Event | None = field(default=None, repr=False)

    @property
    def runtime(self) -> ModelRuntime:
        """The first instance: its provider and graph are every instance's."""
        return self.instances[0]

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version

    def acquire(self) -> None:
        """A request chose this version: it stays loaded until ``release``."""
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        if not self.in_flight and self._idle is not None:
            self._idle.set()

    async def drained(self) -> None:
        """Returns once no request holds this version (event loop only)."""
        while self.in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def close(self) -> None:
        """Drop the ORT sessions and this version's metric series (after its batcher stopped):
        the memory goes back even if something still refers to this state."""
        for instance in self.instances:
            instance.close()
        self.metrics.close()


def load_state(
    settings: Settings, model: ModelDir | None = None, shared: Shared | None = None
) -> ServerState:
    """A version's state (sessions, metrics, batcher, pipeline), not yet warm nor batching.
    ``model`` defaults to the settings' default model; ``shared`` to a server of its own."""
    model = model or pick_model(settings)
    shared = shared or load_shared(settings)
    instances = [
        ModelRuntime(model, settings.provider_list, settings.threads, settings.ort_spin)
        for _ in range(settings.instances)
    ]
    metrics = ServerMetrics(model, instances[0].provider, shared.metrics)
    batcher = Batcher(
        [instance.run for instance in instances],
        model,
        metrics,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
    )
    pipeline = Pipeline(model, batcher, shared.budget, settings.max_pixels)
    return ServerState(
        settings, model, instances, metrics, batcher, shared.budget, pipeline, shared.render_pool
    )


def budget_bytes(settings: Settings) -> int:
    if settings.memory_budget_mb:
        return settings.memory_budget_mb << 20
    return auto_budget_bytes(settings.workers)


def model_memory_bytes(settings: Settings) -> int:
    """What the loaded models' weights may hold together (``model_memory_mb``; 0: what the
    process may use less the requests' budget, at least a quarter of what it may use)."""
    if settings.model_memory_mb:
        return settings.model_memory_mb << 20
    limit = memory_limit_bytes() // max(settings.workers, 1)
    return max(limit - budget_bytes(settings), limit // 4)


def model_bytes(model: ModelDir, settings: Settings) -> int:
    """A version's weights in memory, estimated before it is opened: the largest graph one of
    the providers would run, once per instance (ORT holds each session's initializers)."""
    graphs = {model.graph_for(provider) for provider in settings.provider_list}
    return max(graph.stat().st_size for graph in graphs) * settings.instances


def warm_up(state: ServerState) -> float:
    """A full batch with every task, and every map kernel once (compiled, or loaded from
    numba's cache), so that the first request pays neither."""
    started = time.perf_counter()
    for instance in state.instances:
        instance.warm_up(state.settings.max_batch)
    maps.compile_kernels()
    return time.perf_counter() - started
