"""A Ray Serve replica's metrics, handed to Ray's metrics agent (``ray.util.metrics``).

The replica records its metrics exactly as the plain server does (``ServerMetrics``, its own
registry: the replica's ``/metrics`` still renders them). ``RegistryMirror`` copies every sample
of that registry into a Ray gauge of the same name, tagged with the replica's id: counters and
histogram buckets, sums and counts are cumulative values, so the gauge's last value is the exact
count, and series of different replicas never merge. Ray's agent on each node exports them with
a ``ray_`` prefix; ``monitoring/prometheus-ray.yml`` renames ``ray_ase_*`` back to ``ase_*``, so
the rules and dashboards read Ray replicas as they read plain servers (PromQL's ``rate`` and
``histogram_quantile`` read the numbers, not the declared type).

Ray (2.60) stops exporting a gauge about 20 s after it was last set, even though its value
stands: ``ase_model_info`` (set once) left Prometheus 20 s after a replica started, and so would
the counters of a task nobody asked for lately. So a value that did not change is set again
every ``REFRESH_S``; a changed one on the next pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from ray.util import metrics as ray_metrics

REPLICA_TAG = "replica"
SKIPPED_SUFFIXES = ("_created",)  # prometheus_client's creation timestamps: not counts
REFRESH_S = 5.0  # well inside the ~20 s after which Ray drops a gauge that was not set


class RegistryMirror:
    """Copies a registry's samples into Ray gauges: changed values on every pass, all of them
    every ``REFRESH_S`` (module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        replica: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._replica = replica
        self._clock = clock
        self._gauges: dict[tuple[str, tuple[str, ...]], ray_metrics.Gauge] = {}
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._refreshed_at: float | None = None

    def export(self) -> int:
        """One pass over the registry; returns how many series were set. Thread-safe with the
        recording side (prometheus_client locks each value), so it may run off the event loop."""
        now = self._clock()
        refresh = self._refreshed_at is None or now - self._refreshed_at >= REFRESH_S
        if refresh:
            self._refreshed_at = now
        changed = 0
        for family in self._registry.collect():
            for sample in family.samples:
                if sample.name.endswith(SKIPPED_SUFFIXES):
                    continue
                labels = tuple(sorted(sample.labels.items()))
                key = (sample.name, labels)
                if not refresh and self._last.get(key) == sample.value:
                    continue
                tags = {**dict(labels), REPLICA_TAG: self._replica}
                self._gauge(sample.name, family.documentation, tuple(sorted(tags))).set(
                    sample.value, tags
                )
                self._last[key] = sample.value
                changed += 1
        return changed

    def _gauge(self, name: str, documentation: str, tag_keys: tuple[str, ...]):
        """One Ray gauge per sample name and tag set (a histogram's buckets carry ``le``, its
        sum and count do not)."""
        key = (name, tag_keys)
        if key not in self._gauges:
            self._gauges[key] = ray_metrics.Gauge(name, documentation, tag_keys)
        return self._gauges[key]
