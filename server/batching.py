"""Dynamic batching: concurrent requests become one model call.

Each request is one image and its task set. A worker takes the oldest waiting request, then
keeps taking requests until ``max_batch`` images or ``max_wait`` seconds, drops the ones whose
client left or whose deadline passed, packs the rest into ``images`` / ``stream_image`` /
``stream_task`` (one stream per (image, task) pair, so unrequested tasks cost nothing), runs
the session in a thread (the event loop stays free) and hands each request its own rows.
Every stream's output depends only on its own image, so a batched answer equals the lone one.

With several model instances (``run_batches``: one per ORT session) there is one worker per
instance; one collects at a time, so a batch fills while the other instances compute, and the
next free instance takes the next batch (Triton's instance groups, in one process).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from server.errors import Internal, Unavailable, deadline_exceeded, overloaded
from server.metrics import ServerMetrics
from server.modeldir import ModelDir

log = logging.getLogger("server.batching")

ROUTER_FLUSH_AFTER_S = 1.0
"""Longest time a batch's router statistics wait outside the counters (``_observe``)."""
RunBatch = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class JobResult:
    """One request's share of a model call."""

    maps: dict[str, np.ndarray]  # task -> (C, H, W) prediction at model size
    expert_tokens: dict[str, np.ndarray]  # task -> (L, N)
    shared_gate_mass: dict[str, np.ndarray]  # task -> (L,)
    queue_s: float
    inference_s: float
    batch_images: int


@dataclass
class Job:
    image: np.ndarray  # (3, H, W) normalised
    task_ids: tuple[int, ...]  # increasing
    deadline: float  # time.monotonic()
    future: asyncio.Future[JobResult]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self,
        run_batches: list[RunBatch],
        model: ModelDir,
        metrics: ServerMetrics,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
    ) -> None:
        if not run_batches:
            raise ValueError("a batcher needs at least one model instance")
        self._run_batches = run_batches
        self._model = model
        self._metrics = metrics
        self._max_batch, self._max_wait_s, self._max_queue = max_batch, max_wait_s, max_queue
        self._pending: deque[Job] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(len(run_batches), thread_name_prefix="ase-inference")
        self._workers: list[asyncio.Task] = []
        self._collecting = asyncio.Lock()  # one worker fills a batch at a time
        self._busy = 0  # workers between taking a batch and answering it
        self._flush_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(run_batch), name=f"ase-batcher-{number}")
            for number, run_batch in enumerate(self._run_batches)
        ]

    async def stop(self, timeout_s: float) -> None:
        """Finish what is queued (graceful shutdown), then stop the worker and its thread."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._pending or self._busy:
                    await asyncio.sleep(0.01)
        except TimeoutError:
            log.warning("shutdown: %d queued requests abandoned", len(self._pending))
        for worker in self._workers:
            worker.cancel()
        closing = Unavailable("shutting_down", "the server is shutting down; retry elsewhere", 1)
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(closing)
        self.flush_router()
        await asyncio.to_thread(self._executor.shutdown, True)

    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, image: np.ndarray, task_ids: tuple[int, ...], deadline: float) -> Job:
        """Queue one request; a full queue raises ``overloaded`` (503) at once."""
        if len(self._pending) >= self._max_queue:
            raise overloaded(f"{len(self._pending)} requests waiting")
        job = Job(image, task_ids, deadline, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._metrics.queue_depth.set(len(self._pending))
        self._arrived.set()
        return job

    def abandon(self, job: Job, reason: str) -> None:
        """The request gave up (``deadline`` or ``disconnected``): take its job out of the queue
        now, so it holds no queue place or batch slot, and count it once."""
        if not job.future.done():
            job.future.cancel()
        try:
            self._pending.remove(job)
        except ValueError:
            return  # already taken by the worker, which counts it in _drop_dead
        self._metrics.dropped.labels(reason).inc()
        self._metrics.queue_depth.set(len(self._pending))

    async def _work(self, run_batch: RunBatch) -> None:
        while True:
            async with self._collecting:
                batch = await self._collect()
                self._busy += 1
            try:
                live = self._drop_dead(batch)
                if live:
                    await self._run(live, run_batch)
            except Exception as error:  # one bad batch must not stop the worker for the rest
                log.exception("batch of %d requests failed", len(batch))
                failure = Internal("internal_error", f"serving this batch failed: {error}")
                for job in batch:  # answer now rather than leave clients to their deadline
                    if not job.future.done():
                        job.future.set_exception(failure)
            finally:
                self._busy -= 1

    async def _collect(self) -> list[Job]:
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        batch = [self._pending.popleft()]
        close_at = time.monotonic() + self._max_wait_s
        while len(batch) < self._max_batch:
            if self._pending:
                batch.append(self._pending.popleft())
                continue
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                break
        self._metrics.queue_depth.set(len(self._pending))
        return batch

    def _drop_dead(self, batch: list[Job]) -> list[Job]:
        """Requests whose client left (future cancelled) or whose deadline passed cost nothing."""
        now, live = time.monotonic(), []
        for job in batch:
            if job.future.done():  # its request gave up between collection and now
                reason = "deadline" if now > job.deadline else "disconnected"
                self._metrics.dropped.labels(reason).inc()
            elif now > job.deadline:
                self._metrics.dropped.labels("deadline").inc()
                job.future.set_exception(deadline_exceeded())
            else:
                live.append(job)
        return live

    async def _run(self, jobs: list[Job], run_batch: RunBatch) -> None:
        images = np.stack([job.image for job in jobs])  # (B, 3, H, W)
        stream_image = np.array([i for i, job in enumerate(jobs) for _ in job.task_ids], np.int64)
        stream_task = np.array([t for job in jobs for t in job.task_ids], np.int64)  # (S,)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(
                self._executor, run_batch, images, stream_image, stream_task
            )
        except Exception as error:
            log.exception("model call failed")
            failure = Internal("internal_error", f"the model failed on this batch: {error}")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(failure)
            return
        inference_s = time.monotonic() - started
        self._observe(jobs, started, inference_s, stream_task, outputs)
        for job, result in zip(jobs, self._split(jobs, stream_task, outputs), strict=True):
            if not job.future.done():
                job.future.set_result(
                    JobResult(*result, started - job.enqueued, inference_s, len(jobs))
                )

    def _split(self, jobs: list[Job], stream_task: np.ndarray, outputs: dict[str, np.ndarray]):
        """Per job: (maps, expert_tokens, shared_gate_mass) keyed by task name."""
        names = {t.id: t.name for t in self._model.tasks}
        seen_of_task = dict.fromkeys(names, 0)  # streams of each task handed out so far
        stream = 0
        for job in jobs:
            maps, tokens, mass = {}, {}, {}
            for task_id in job.task_ids:
                name = names[task_id]
                maps[name] = outputs[name][seen_of_task[task_id]]  # (C, H, W)
                tokens[name] = outputs["expert_tokens"][stream]  # (L, N)
                mass[name] = outputs["shared_gate_mass"][stream]  # (L,)
                seen_of_task[task_id] += 1
                stream += 1
            yield maps, tokens, mass

    def _observe(self, jobs, started, inference_s, stream_task, outputs) -> None:
        metrics = self._metrics
        for job in jobs:
            metrics.queue_wait.observe(started - job.enqueued)
        metrics.inference.observe(inference_s)
        metrics.batch_size.observe(len(jobs))
        metrics.batch_streams.observe(len(stream_task))
        metrics.observe_router(stream_task, outputs["expert_tokens"], outputs["shared_gate_mass"])
        # Responses flush the router totals into the counters once sent (predict.py); this
        # timer covers batches whose requests never got one (client gone).
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(ROUTER_FLUSH_AFTER_S, self.flush_router)

    def flush_router(self) -> None:
        """The batches' router statistics into the Prometheus counters (``ServerMetrics``)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._metrics.flush_router()
