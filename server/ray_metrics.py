"""A Ray Serve replica's metrics, handed to Ray's metrics agent (``ray.util.metrics``).

The replica records its metrics exactly as the plain server does (``ServerMetrics``, its own
registry: the replica's ``/metrics`` still renders them). ``RegistryMirror`` copies every sample
of that registry into a Ray gauge of the same name, tagged with the replica's id: counters and
histogram buckets, sums and counts are cumulative values, so the gauge's last value is the exact
count, and series of different replicas never merge. Ray's agent on each node exports them with
a ``ray_`` prefix; ``monitoring/prometheus-ray.yml`` renames ``ray_ase_*`` back to ``ase_*``, so
the rules and dashboards read Ray replicas as they read plain servers (PromQL's ``rate`` and
``histogram_quantile`` read the numbers, not the declared type).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from ray.util import metrics as ray_metrics

REPLICA_TAG = "replica"
SKIPPED_SUFFIXES = ("_created",)  # prometheus_client's creation timestamps: not counts


class RegistryMirror:
    """Copies a registry's samples into Ray gauges; only changed values are set again."""

    def __init__(self, registry: CollectorRegistry, replica: str) -> None:
        self._registry = registry
        self._replica = replica
        self._gauges: dict[tuple[str, tuple[str, ...]], ray_metrics.Gauge] = {}
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def export(self) -> int:
        """One pass over the registry; returns how many series were set. Thread-safe with the
        recording side (prometheus_client locks each value), so it may run off the event loop."""
        changed = 0
        for family in self._registry.collect():
            for sample in family.samples:
                if sample.name.endswith(SKIPPED_SUFFIXES):
                    continue
                labels = tuple(sorted(sample.labels.items()))
                key = (sample.name, labels)
                if self._last.get(key) == sample.value:
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
