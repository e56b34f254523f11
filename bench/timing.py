"""Timing A against B on a shared machine: run them in turn (A, B, A, B, ...), so both see the
same machine, and compare medians. A machine whose speed drifts by tens of percent within
minutes (these 2-core ones do) moves both alike.

Wall time also counts what the other processes on the machine take from the cores; the CPU
time of this process (all its threads, ``time.process_time``) counts only the work itself, so it
is the steadier measure of work done, and wall time the measure of what a client waits.

Blocks of runs timed one after another (not in turn) are checked instead: ``OthersLoad``
measures the share of the CPU other processes took during a block, and ``quiet_median_ms``
re-measures a block while it was too large."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def timed_ms(call: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    """Wall ms of ``repeats`` calls of ``call`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def alternate(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 3
) -> dict[str, np.ndarray]:
    """Each zero-argument callable's ``repeats`` times in ms, the callables run in turn after
    ``warmup`` untimed rounds; element i of every array comes from the same round."""
    return {name: both["wall"] for name, both in alternate_clocks(calls, repeats, warmup).items()}


def alternate_clocks(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 3
) -> dict[str, dict[str, np.ndarray]]:
    """As ``alternate``, with both clocks: ``{name: {"wall": ms, "cpu": ms}}``, the CPU time
    being this process's (every thread's) during the call."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started, cpu = time.perf_counter(), time.process_time()
            call()
            times[name]["wall"].append((time.perf_counter() - started) * 1000)
            times[name]["cpu"].append((time.process_time() - cpu) * 1000)
    return {
        name: {clock: np.asarray(v) for clock, v in both.items()} for name, both in times.items()
    }


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall ms of ``repeats`` calls after 3 warm-up ones."""
    return statistics.median(timed_ms(call, repeats))


def busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux ``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class OthersLoad:
    """Share of the machine's CPU used by *other* processes while a block of timings ran:
    a shared machine's neighbours show up here instead of silently in the medians."""

    def __enter__(self) -> OthersLoad:
        self.share: float | None = None
        self._start = (busy_seconds(), _own_cpu_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own, wall = busy_seconds(), _own_cpu_seconds(), time.perf_counter()
        if busy is not None and self._start[0] is not None:
            others = (busy - self._start[0]) - (own - self._start[1])
            self.share = max(0.0, others / ((wall - self._start[2]) * (os.cpu_count() or 1)))


def quiet_median_ms(
    call: Callable[[], object], repeats: int, max_others: float, attempts: int = 5
) -> tuple[float, float | None]:
    """``median_ms``, re-measured (up to ``attempts`` times) while other processes used more
    than ``max_others`` of the CPU; returns the quietest attempt and its others' share."""
    best: tuple[float, float | None] = (float("inf"), None)
    for _ in range(attempts):
        with OthersLoad() as load:
            ms = median_ms(call, repeats)
        if load.share is None or load.share <= max_others:
            return ms, load.share
        if best[1] is None or load.share < best[1]:
            best = (ms, load.share)
    return best
