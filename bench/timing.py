"""Timing A against B on a shared machine: run them in turn (A, B, A, B, ...), so both see the
same machine, and compare medians. A machine whose speed drifts by tens of percent within
minutes (these 2-core ones do) moves both alike."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def alternate(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 3
) -> dict[str, np.ndarray]:
    """Each zero-argument callable's ``repeats`` times in ms, the callables run in turn after
    ``warmup`` untimed rounds; element i of every array comes from the same round."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: np.asarray(values) for name, values in times.items()}
