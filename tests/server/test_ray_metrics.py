"""RegistryMirror: which samples a pass hands to Ray (Ray itself is faked: its gauges record
what they were set to). The Ray cluster tests check the same end to end."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from tests.server.ray_cluster import require_ray  # first: it sets Ray's environment


class RecordingGauge:
    sets: list[tuple[str, float, dict]] = []

    def __init__(self, name: str, documentation: str, tag_keys: tuple[str, ...]) -> None:
        self.name = name

    def set(self, value: float, tags: dict) -> None:
        RecordingGauge.sets.append((self.name, value, tags))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mirrored(monkeypatch):
    require_ray()
    from server import ray_metrics

    monkeypatch.setattr(ray_metrics.ray_metrics, "Gauge", RecordingGauge)
    RecordingGauge.sets = []
    registry, clock = CollectorRegistry(), Clock()
    info = Gauge("ase_model_info", "set once", ["model"], registry=registry)
    info.labels("m").set(1)
    requests = Counter("ase_task_requests", "counted", ["task"], registry=registry)
    requests.labels("edges").inc()
    mirror = ray_metrics.RegistryMirror(registry, "r1", clock=clock)
    return mirror, requests, clock, ray_metrics.REFRESH_S


def names(sets) -> set[str]:
    return {name for name, _, _ in sets}


def test_the_first_pass_sets_every_series_tagged_with_the_replica(mirrored):
    mirror, _, _, _ = mirrored
    assert mirror.export() == 2
    assert names(RecordingGauge.sets) == {"ase_model_info", "ase_task_requests_total"}
    assert all(tags["replica"] == "r1" for _, _, tags in RecordingGauge.sets)


def test_unchanged_series_wait_for_the_refresh_and_changed_ones_do_not(mirrored):
    mirror, requests, clock, refresh_s = mirrored
    mirror.export()
    clock.now += 1.0
    assert mirror.export() == 0
    requests.labels("edges").inc()
    clock.now += 1.0
    RecordingGauge.sets = []
    assert mirror.export() == 1
    assert RecordingGauge.sets == [
        ("ase_task_requests_total", 2.0, {"task": "edges", "replica": "r1"})
    ]


def test_a_value_that_never_changes_is_set_again_every_refresh(mirrored):
    """Ray stops exporting a gauge about 20 s after it was last set: ase_model_info, set once,
    must be set again while the replica lives."""
    mirror, _, clock, refresh_s = mirrored
    mirror.export()
    for _ in range(3):
        clock.now += refresh_s
        RecordingGauge.sets = []
        assert mirror.export() == 2
        assert ("ase_model_info", 1.0, {"model": "m", "replica": "r1"}) in RecordingGauge.sets
