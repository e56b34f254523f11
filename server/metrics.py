"""Every Prometheus metric of the server, declared once (contract 5), with explicit buckets.

Metrics live on an instance-owned registry, not the library's global one. With several worker
processes, ``PROMETHEUS_MULTIPROC_DIR`` must be set before ``prometheus_client`` is imported
(``python -m server --workers N`` does it); ``/metrics`` then merges every worker's files.
"""

from __future__ import annotations

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


class ServerMetrics:
    def __init__(self, model: ModelDir, provider: str) -> None:
        self.model = model
        self._children: dict[tuple[str, int], tuple] = {}  # (task, layer) -> router series
        # Router statistics not yet in the counters, by task id (observe_router, flush_router)
        task_slots = max(t.id for t in model.tasks) + 1
        layers, experts = model.adapters.layers, model.adapters.experts
        self._pending_streams = np.zeros(task_slots, np.int64)
        self._pending_tokens = np.zeros((task_slots, layers, experts))
        self._pending_mass = np.zeros((task_slots, layers))
        self.registry = CollectorRegistry()
        self._declare_requests()
        self._declare_batches()
        self._declare_routers()
        info = Gauge(
            "ase_model_info",
            "the model being served (value 1)",
            ["name", "version", "adapters", "routing", "provider"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        spec, routing = model.adapters.spec, model.adapters.routing.value
        info.labels(model.name, model.version, spec, routing, provider).set(1)

    def _declare_requests(self) -> None:
        r = self.registry
        self.requests = Counter(
            "ase_requests",
            "requests by protocol (native, v2, grpc), endpoint and status (HTTP's; for gRPC "
            "the HTTP status of the protocol's error table, docs/api_v2.md)",
            ["protocol", "endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "ase_request_duration_seconds",
            "whole request, first byte in to response out",
            ["protocol", "endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.dropped = Counter(
            "ase_requests_dropped",
            "queued requests dropped before the model ran them",
            ["reason"],
            registry=r,
        )

    def _declare_batches(self) -> None:
        r = self.registry
        self.queue_wait = Histogram(
            "ase_queue_wait_seconds",
            "time a request waited for its batch to start",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "ase_inference_duration_seconds",
            "one model call (a whole batch)",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ase_batch_size", "images per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_streams = Histogram(
            "ase_batch_streams", "streams per model call", buckets=STREAM_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "ase_queue_depth",
            "requests waiting for a batch",
            multiprocess_mode="livesum",
            registry=r,
        )

    def _declare_routers(self) -> None:
        r = self.registry
        self.expert_tokens = Counter(
            "ase_expert_tokens",
            "tokens each expert processed",
            ["layer", "task", "expert", "kind"],
            registry=r,
        )
        self.stream_tokens = Counter(
            "ase_stream_tokens", "tokens through each layer per task", ["layer", "task"], registry=r
        )
        self.shared_gate_mass = Counter(
            "ase_shared_gate_mass",
            "summed gate weight of the shared experts",
            ["layer", "task"],
            registry=r,
        )
        self.task_requests = Counter(
            "ase_task_requests", "streams served per task", ["task"], registry=r
        )

    def observe_request(self, protocol: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(protocol, endpoint, str(status)).inc()
        self.request_duration.labels(protocol, endpoint).observe(seconds)

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
            self.task_requests.labels(task.name).inc(streams)
            layers = zip(
                self._pending_tokens[task.id].tolist(),
                self._pending_mass[task.id].tolist(),
                strict=True,
            )
            for layer, (counts, layer_mass) in enumerate(layers):
                layer_tokens, mass_series, experts = self._router_children(task.name, layer, shared)
                layer_tokens.inc(streams * tokens_per_stream)
                mass_series.inc(layer_mass)
                for child, count in zip(experts, counts, strict=True):
                    if count:  # no zero increments: a series appears once it has counts
                        child.inc(count)
        self._pending_streams[:] = 0
        self._pending_tokens[:] = 0.0
        self._pending_mass[:] = 0.0

    def _router_children(self, task: str, layer: int, shared: set[int]) -> tuple:
        """The (stream tokens, gate mass, [expert tokens]) series of one task and layer, looked
        up once: label look-ups per expert per batch would otherwise run on the event loop."""
        key = (task, layer)
        if key not in self._children:
            experts = self.model.adapters.experts
            self._children[key] = (
                self.stream_tokens.labels(str(layer), task),
                self.shared_gate_mass.labels(str(layer), task),
                [
                    self.expert_tokens.labels(
                        str(layer), task, str(e), "shared" if e in shared else "routed"
                    )
                    for e in range(experts)
                ],
            )
        return self._children[key]

    def render(self) -> tuple[bytes, str]:
        """The exposition text: this process's registry, or every worker's in multiprocess mode."""
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Drop a finished worker's live gauges (queue depth, model info) in multiprocess mode."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)
