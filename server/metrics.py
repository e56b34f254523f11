"""Every Prometheus metric of the server, declared once (contract 5), with explicit buckets.

Metrics live on an instance-owned registry, not the library's global one. With several worker
processes, ``PROMETHEUS_MULTIPROC_DIR`` must be set before ``prometheus_client`` is imported
(``python -m server --workers N`` does it); ``/metrics`` then merges every worker's files.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from server.modeldir import ModelDir

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STREAM_BUCKETS = (1, 2, 5, 10, 20, 40, 80, 160, 320, 640, 1280)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


MODEL_LABELS = ("model", "version")
"""Every per-model series carries them (request metrics too: empty where no model answered)."""


class MetricFamilies:
    """Every metric of one server, declared once on its own registry; each model version's
    series are the children ``ServerMetrics`` resolves (labels ``model``, ``version``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # (protocol, endpoint, status) seen per model version: an unloaded one's are removed
        self._request_series: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        self._declare_requests()
        self._declare_batches()
        self._declare_routers()
        self.model_info = Gauge(
            "ase_model_info",
            "the model versions being served (value 1)",
            [*MODEL_LABELS, "checkpoint", "adapters", "routing", "provider"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )

    def _declare_requests(self) -> None:
        r = self.registry
        self.requests = Counter(
            "ase_requests",
            "requests by model version (empty where none answered), protocol (native, v2, "
            "grpc), endpoint and status (HTTP's; for gRPC the HTTP status of the protocol's "
            "error table, docs/api_v2.md)",
            [*MODEL_LABELS, "protocol", "endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "ase_request_duration_seconds",
            "whole request, first byte in to response out",
            [*MODEL_LABELS, "protocol", "endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.dropped = Counter(
            "ase_requests_dropped",
            "queued requests dropped before the model ran them",
            [*MODEL_LABELS, "reason"],
            registry=r,
        )

    def _declare_batches(self) -> None:
        r = self.registry
        self.queue_wait = Histogram(
            "ase_queue_wait_seconds",
            "time a request waited for its batch to start",
            MODEL_LABELS,
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "ase_inference_duration_seconds",
            "one model call (a whole batch)",
            MODEL_LABELS,
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ase_batch_size",
            "images per model call",
            MODEL_LABELS,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_streams = Histogram(
            "ase_batch_streams",
            "streams per model call",
            MODEL_LABELS,
            buckets=STREAM_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "ase_queue_depth",
            "requests waiting for a batch",
            MODEL_LABELS,
            multiprocess_mode="livesum",
            registry=r,
        )

    def _declare_routers(self) -> None:
        r = self.registry
        self.expert_tokens = Counter(
            "ase_expert_tokens",
            "tokens each expert processed",
            [*MODEL_LABELS, "layer", "task", "expert", "kind"],
            registry=r,
        )
        self.stream_tokens = Counter(
            "ase_stream_tokens",
            "tokens through each layer per task",
            [*MODEL_LABELS, "layer", "task"],
            registry=r,
        )
        self.shared_gate_mass = Counter(
            "ase_shared_gate_mass",
            "summed gate weight of the shared experts",
            [*MODEL_LABELS, "layer", "task"],
            registry=r,
        )
        self.task_requests = Counter(
            "ase_task_requests", "streams served per task", [*MODEL_LABELS, "task"], registry=r
        )

    def observe_request(
        self,
        protocol: str,
        endpoint: str,
        status: int,
        seconds: float,
        model: str = "",
        version: str = "",
    ) -> None:
        self.requests.labels(model, version, protocol, endpoint, str(status)).inc()
        self.request_duration.labels(model, version, protocol, endpoint).observe(seconds)
        if model:
            seen = self._request_series.setdefault((model, version), set())
            seen.add((protocol, endpoint, str(status)))

    def forget_requests(self, model: str, version: str) -> None:
        """Remove one model version's request series (it was unloaded)."""
        seen = self._request_series.pop((model, version), set())
        for labels in seen:
            _remove(self.requests, (model, version, *labels))
        for protocol, endpoint in {labels[:2] for labels in seen}:
            _remove(self.request_duration, (model, version, protocol, endpoint))

    def render(self) -> tuple[bytes, str]:
        """The exposition text: this process's registry, or every worker's in multiprocess mode."""
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ServerMetrics:
    """One model version's series: what its batcher observes and its router statistics, the
    label children resolved once. ``close`` removes them when the version is unloaded."""

    def __init__(
        self, model: ModelDir, provider: str, families: MetricFamilies | None = None
    ) -> None:
        self.model = model
        self.families = families or MetricFamilies()
        self.registry = self.families.registry
        f, self.labels = self.families, (model.name, model.version)
        self.queue_wait = f.queue_wait.labels(*self.labels)
        self.inference = f.inference.labels(*self.labels)
        self.batch_size = f.batch_size.labels(*self.labels)
        self.batch_streams = f.batch_streams.labels(*self.labels)
        self.queue_depth = f.queue_depth.labels(*self.labels)
        self.dropped = _Reasons(f.dropped, self.labels)
        self._children: dict[tuple[str, int], tuple] = {}  # (task, layer) -> router series
        # Router statistics not yet in the counters, by task id (observe_router, flush_router)
        task_slots = max(t.id for t in model.tasks) + 1
        layers, experts = model.adapters.layers, model.adapters.experts
        self._pending_streams = np.zeros(task_slots, np.int64)
        self._pending_tokens = np.zeros((task_slots, layers, experts))
        self._pending_mass = np.zeros((task_slots, layers))
        spec, routing = model.adapters.spec, model.adapters.routing.value
        self._info = (*self.labels, model.checkpoint, spec, routing, provider)
        f.model_info.labels(*self._info).set(1)

    def observe_request(self, protocol: str, endpoint: str, status: int, seconds: float) -> None:
        self.families.observe_request(protocol, endpoint, status, seconds, *self.labels)

    def render(self) -> tuple[bytes, str]:
        return self.families.render()

    def observe_router(
        self, stream_task: np.ndarray, expert_tokens: np.ndarray, shared_gate_mass: np.ndarray
    ) -> None:
        """Add one batch's router statistics to the pending totals: expert_tokens (S, L, N),
        shared_gate_mass (S, L). NumPy sums only: this runs on the event loop between the
        model's answer and the responses. ``flush_router`` moves the totals into the counters."""
        np.add.at(self._pending_streams, stream_task, 1)  # unbuffered: repeated ids all count
        np.add.at(self._pending_tokens, stream_task, expert_tokens)
        np.add.at(self._pending_mass, stream_task, shared_gate_mass)

    def flush_router(self) -> None:
        """Pending router totals -> the Prometheus counters (several hundred ``inc`` calls,
        about 0.5 ms at the demo size: the server calls it after a response has gone out,
        before ``/metrics`` renders, and from a timer, never between a model call and its
        responses). Event-loop thread only, like ``observe_router``."""
        tokens_per_stream = self.model.adapters.tokens_per_stream
        shared = set(self.model.adapters.shared_experts)
        for task in self.model.tasks:
            streams = int(self._pending_streams[task.id])
            if not streams:
                continue
            task_requests, layer_children = self._router_children(task.name, shared)
            task_requests.inc(streams)
            layers = zip(
                self._pending_tokens[task.id].tolist(),
                self._pending_mass[task.id].tolist(),
                strict=True,
            )
            for (counts, layer_mass), (tokens, mass, experts) in zip(
                layers, layer_children, strict=True
            ):
                tokens.inc(streams * tokens_per_stream)
                mass.inc(layer_mass)
                for child, count in zip(experts, counts, strict=True):
                    if count:  # no zero increments: a series appears once it has counts
                        child.inc(count)
        self._pending_streams[:] = 0
        self._pending_tokens[:] = 0.0
        self._pending_mass[:] = 0.0

    def _router_children(self, task: str, shared: set[int]) -> tuple:
        """A task's series (streams served; per layer: stream tokens, gate mass, [expert
        tokens]), looked up once: label look-ups per expert per batch would otherwise run on
        the event loop. Every expert's series exists from the task's first batch on, zeros
        included (the dead-expert rules need them)."""
        if task not in self._children:
            f, labels = self.families, self.labels
            layers = [
                (
                    f.stream_tokens.labels(*labels, str(layer), task),
                    f.shared_gate_mass.labels(*labels, str(layer), task),
                    [
                        f.expert_tokens.labels(*labels, str(layer), task, str(e), kind)
                        for e, kind in enumerate(self._expert_kinds(shared))
                    ],
                )
                for layer in range(self.model.adapters.layers)
            ]
            self._children[task] = (f.task_requests.labels(*labels, task), layers)
        return self._children[task]

    def _expert_kinds(self, shared: set[int]) -> list[str]:
        return ["shared" if e in shared else "routed" for e in range(self.model.adapters.experts)]

    def close(self) -> None:
        """Remove this version's series (it was unloaded): what was pending is flushed first,
        so a last scrape could still see it; scrapes after this see the version gone. In
        multiprocess mode the files keep the values (prometheus_client cannot remove them)."""
        self.flush_router()
        if multiprocess_dir():
            return
        f, labels = self.families, self.labels
        for family in (f.queue_wait, f.inference, f.batch_size, f.batch_streams, f.queue_depth):
            _remove(family, labels)
        for reason in self.dropped.reasons:
            _remove(f.dropped, (*labels, reason))
        _remove(f.model_info, self._info)
        shared = set(self.model.adapters.shared_experts)
        for task in self._children:
            _remove(f.task_requests, (*labels, task))
            for layer in range(self.model.adapters.layers):
                _remove(f.stream_tokens, (*labels, str(layer), task))
                _remove(f.shared_gate_mass, (*labels, str(layer), task))
                for e, kind in enumerate(self._expert_kinds(shared)):
                    _remove(f.expert_tokens, (*labels, str(layer), task, str(e), kind))
        self._children.clear()
        f.forget_requests(*labels)


class _Reasons:
    """``ase_requests_dropped`` of one model version: ``labels(reason)`` as the batcher calls it."""

    def __init__(self, counter: Counter, labels: tuple[str, str]) -> None:
        self.counter, self.model_labels = counter, labels
        self.reasons: set[str] = set()

    def labels(self, reason: str):
        self.reasons.add(reason)
        return self.counter.labels(*self.model_labels, reason)


def _remove(family, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):  # never observed
        family.remove(*labels)


def mark_worker_dead(pid: int) -> None:
    """Drop a finished worker's live gauges (queue depth, model info) in multiprocess mode."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)
