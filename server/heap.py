"""Giving freed memory back to the OS after camera-size requests (glibc).

glibc serves allocations over 128 KiB from their own mappings, returned when freed, but raises
that threshold to the size of each such block freed (up to 32 MiB): after the first camera-size
response, map bands and decoded images come from the heap arenas, which keep what they held.
Two ways out, both measured in docs/benchmarks.md (memory, and the camera-size rows):

- ``idle`` (the default): once no request has held memory for ``IDLE_TRIM_AFTER_S``,
  ``malloc_trim`` gives the arenas' free pages back. While requests keep coming their buffers are
  reused as glibc intends; when a burst ends, RSS returns near idle.
- ``always``: the threshold fixed at 128 KiB, so every large buffer is its own mapping, returned
  when freed. RSS follows the requests closely, but every buffer is fresh pages the kernel must
  fault in and zero: at 12 MP that was 40 ms more per request on this project's machine.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import platform
from collections.abc import Callable

log = logging.getLogger("server.heap")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 << 10
IDLE_TRIM_AFTER_S = 1.0
"""How long nothing is held before the trim: longer than the gap between one client's
requests, so that a steady stream keeps its buffers."""


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (looked up once: ``platform.libc_ver`` reads the
    interpreter's executable), else ``None``."""
    return ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None


def is_glibc() -> bool:
    return glibc() is not None


def fix_mmap_threshold() -> bool:
    """Every buffer over 128 KiB its own mapping from now on (``always``); ``False`` if not
    glibc."""
    libc = glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def trim_heap() -> bool:
    """The arenas' free pages back to the OS (glibc's ``malloc_trim(0)``); ``False`` if not
    glibc or nothing could be returned."""
    libc = glibc()
    return libc is not None and bool(libc.malloc_trim(0))


class IdleTrim:
    """Calls ``trim`` (in a thread: it walks every arena) once ``idle`` has not been followed
    by ``busy`` for ``after_s``. Both are called on the event loop, by the memory budget."""

    def __init__(self, after_s: float = IDLE_TRIM_AFTER_S, trim: Callable[[], object] = trim_heap):
        self.after_s, self._trim = after_s, trim
        self._timer: asyncio.TimerHandle | None = None
        self.trims = 0  # how many have started

    @property
    def pending(self) -> bool:
        return self._timer is not None

    def busy(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def idle(self) -> None:
        self.busy()
        self._timer = asyncio.get_running_loop().call_later(self.after_s, self._start)

    def _start(self) -> None:
        self._timer = None
        self.trims += 1
        asyncio.get_running_loop().run_in_executor(None, self._trim)


def heap_policy(mode: str) -> IdleTrim | None:
    """Apply a ``return_freed_memory`` setting: the trimmer the budget calls for ``idle``,
    ``None`` otherwise (``always`` fixes the threshold here and now; ``never``: glibc's own)."""
    if mode != "never" and not is_glibc():
        log.warning("not glibc: freed memory may stay with the process after large requests")
        return None
    if mode == "always":
        fix_mmap_threshold()
    return IdleTrim() if mode == "idle" else None
