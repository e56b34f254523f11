"""One memory budget for the requests in flight: each reserves what it will hold before it
decodes, and waits (first come, first served) or is turned away when the budget is spent.

A 0.7 MiB JPEG of 39 megapixels becomes 117 MB of pixels and, at its own size, five maps of
hundreds of megabytes more; without a bound, a dozen such uploads at once exhaust the machine.
The request's cost is computed from the image header alone (``server/pipeline.py``, ``Plan``),
so nothing is admitted that the budget cannot hold.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from server.errors import TooLarge, deadline_exceeded, overloaded
from server.heap import IdleTrim

log = logging.getLogger("server.budget")
CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)
AUTO_SHARE = 0.5
"""Of the memory the process may use, the share for requests' pixels (the rest: the model,
the runtime's arenas, Python, and headroom for what is not counted, like bodies being read)."""


def memory_limit_bytes() -> int:
    """What this process may use: the container's cgroup limit if there is one (a pod's limit,
    not the host's memory), else the machine's physical memory."""
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < host:  # "max" or a huge v1 value: no limit
            return int(text)
    return host


def auto_budget_bytes(workers: int) -> int:
    return int(memory_limit_bytes() * AUTO_SHARE / max(workers, 1))


@dataclass
class Reservation:
    """Bytes held from a budget until ``release`` (idempotent: every path may call it)."""

    budget: MemoryBudget
    nbytes: int
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget._give_back(self.nbytes)

    def shrink_to(self, nbytes: int) -> None:
        """Give back all but ``nbytes``: what the request holds once its maps are encoded (a
        response body, a stream's band) rather than what it needed to make them."""
        if not self.released and nbytes < self.nbytes:
            given, self.nbytes = self.nbytes - max(nbytes, 0), max(nbytes, 0)
            self.budget._give_back(given)


class Hold:
    """The memory a request's data holds as it arrives: its body while it is read, the copies
    that parsing it makes; grown as they grow, never past the budget (503 when it is spent,
    without waiting: see ``take_now``), released at once."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.nbytes = 0
        self._parts: list[Reservation] = []

    def grow_to(self, nbytes: int) -> None:
        """Hold at least ``nbytes`` in all; 413 past the budget's capacity, 503 (``Retry-After``)
        while the budget cannot hold them."""
        if nbytes <= self.nbytes:
            return
        if nbytes > self.budget.capacity:
            raise TooLarge(
                "payload_too_large",
                f"this request's data needs {nbytes >> 20} MiB of memory; the server's budget "
                f"is {self.budget.capacity >> 20} MiB: send less",
            )
        part = self.budget.take_now(nbytes - self.nbytes)
        if part is None:
            raise overloaded("the memory budget is spent")
        self._parts.append(part)
        self.nbytes = nbytes

    def release(self) -> None:
        """Give everything back (idempotent)."""
        parts, self._parts, self.nbytes = self._parts, [], 0
        for part in parts:
            part.release()


@dataclass
class _Waiter:
    nbytes: int
    granted: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class MemoryBudget:
    """``capacity`` bytes shared by the requests in flight; at most ``max_waiting`` wait.
    ``heap`` hears when the last reservation is released (idle) and when one is taken (busy):
    server/heap.py gives the freed memory back once the server stays idle."""

    def __init__(self, capacity: int, max_waiting: int, heap: IdleTrim | None = None) -> None:
        self.capacity, self.max_waiting, self.heap = capacity, max_waiting, heap
        self.in_use = 0
        self._waiting: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def reserve(self, nbytes: int, deadline: float) -> Reservation:
        """Hold ``nbytes`` until the reservation is released. 413 if the budget could never hold
        it; 503 if too many already wait; 504 if ``deadline`` (``time.monotonic``) passes first."""
        if nbytes > self.capacity:
            raise TooLarge(
                "image_too_large",
                f"this request needs {nbytes >> 20} MiB of memory for its image and maps; the "
                f"server's budget is {self.capacity >> 20} MiB: ask for smaller maps (max_side "
                "or size=model) or send a smaller image",
            )
        return await self._reserve(nbytes, deadline)

    def hold(self) -> Hold:
        """An empty :class:`Hold` for a request's data as it arrives."""
        return Hold(self)

    def take_now(self, nbytes: int) -> Reservation | None:
        """``nbytes`` now if the budget has them, whoever waits, else ``None``: for data that is
        arriving, which must not wait while it holds memory (bodies waiting for more budget
        while holding theirs would wait on each other)."""
        if self.in_use + nbytes > self.capacity:
            return None
        self._take(nbytes)
        return Reservation(self, nbytes)

    async def _reserve(self, nbytes: int, deadline: float) -> Reservation:
        if not self._waiting and self.in_use + nbytes <= self.capacity:
            self._take(nbytes)
            return Reservation(self, nbytes)
        if len(self._waiting) >= self.max_waiting:
            raise overloaded(f"{len(self._waiting)} requests wait for memory")
        return await self._wait(_Waiter(nbytes), deadline)

    async def _wait(self, waiter: _Waiter, deadline: float) -> Reservation:
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await asyncio.shield(waiter.granted)
        except TimeoutError:
            self._withdraw(waiter)
            raise deadline_exceeded() from None
        except BaseException:  # cancelled: the client left
            self._withdraw(waiter)
            raise
        return Reservation(self, waiter.nbytes)

    def _withdraw(self, waiter: _Waiter) -> None:
        if waiter.granted.done():  # granted just as it gave up: the bytes go to the next
            self._give_back(waiter.nbytes)
        else:
            waiter.granted.cancel()
            self._waiting.remove(waiter)
            self._admit_waiting()  # it may have held back smaller ones behind it

    def _take(self, nbytes: int) -> None:
        self.in_use += nbytes
        if self.heap is not None:
            self.heap.busy()

    def _give_back(self, nbytes: int) -> None:
        self.in_use -= nbytes
        self._admit_waiting()
        if self.in_use == 0 and self.heap is not None:
            self.heap.idle()

    def _admit_waiting(self) -> None:
        """Grant waiters in arrival order while they fit (the first that does not, blocks the
        rest: a large request is never starved by a stream of small ones)."""
        while self._waiting and self.in_use + self._waiting[0].nbytes <= self.capacity:
            waiter = self._waiting.popleft()
            self._take(waiter.nbytes)
            waiter.granted.set_result(None)
