"""Timing A against B on a shared machine: run them in turn (A, B, A, B, ...), so both see the
same machine, and compare medians. A machine whose speed drifts by tens of percent within
minutes (these 2-core ones do) moves both alike.

Wall time also counts what the other processes on the machine take from the cores; the CPU
time of this process (all its threads, ``time.process_time``) counts only the work itself, so it
is the steadier measure of work done, and wall time the measure of what a client waits."""

from __future__ import annotations

import time
from collections.abc import Callable

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
