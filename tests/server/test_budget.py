"""The memory budget: first come, first served; never over-admitted; nothing leaks when a
request gives up."""

from __future__ import annotations

import asyncio
import functools
import os
import time

import pytest

from server import budget
from server.budget import MemoryBudget
from server.errors import DeadlineExceeded, TooLarge, Unavailable

FAR = 3600.0


def later(seconds: float = FAR) -> float:
    return time.monotonic() + seconds


def scenario(test):
    """The test is a coroutine: run it in an event loop of its own."""

    @functools.wraps(test)
    def in_a_loop():
        return asyncio.run(test())

    return in_a_loop


async def holding(capacity: int, held: int, max_waiting: int = 4):
    """A budget of ``capacity`` bytes, ``held`` of them reserved: (budget, that reservation)."""
    budget = MemoryBudget(capacity, max_waiting=max_waiting)
    return budget, await budget.reserve(held, later())


@scenario
async def test_reservations_add_up_and_release_once():
    budget = MemoryBudget(100, max_waiting=4)
    first = await budget.reserve(60, later())
    second = await budget.reserve(40, later())
    assert budget.in_use == 100
    first.release()
    first.release()  # idempotent: every path may call it
    assert budget.in_use == 40
    second.release()
    assert budget.in_use == 0


@scenario
async def test_a_request_larger_than_the_budget_is_413_at_once():
    with pytest.raises(TooLarge, match="max_side"):
        await MemoryBudget(100, max_waiting=4).reserve(101, later())


@scenario
async def test_waiters_are_served_in_arrival_order_and_never_over_admitted():
    budget, held = await holding(100, 90)
    granted: list[str] = []

    async def wait(name: str, nbytes: int):
        reservation = await budget.reserve(nbytes, later())
        granted.append(name)
        assert budget.in_use <= budget.capacity
        return reservation

    large = asyncio.create_task(wait("large", 80))
    small = asyncio.create_task(wait("small", 5))  # would fit now, but waits its turn
    await asyncio.sleep(0)
    assert granted == [] and budget.waiting == 2
    held.release()
    reservations = await asyncio.gather(large, small)
    assert granted == ["large", "small"] and budget.in_use == 85
    for reservation in reservations:
        reservation.release()
    assert budget.in_use == 0


@scenario
async def test_too_many_waiting_is_503_with_retry_after():
    budget, held = await holding(10, 10, max_waiting=1)
    waiting = asyncio.create_task(budget.reserve(5, later()))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable) as refused:
        await budget.reserve(5, later())
    assert refused.value.code == "overloaded" and refused.value.retry_after_s == 1
    held.release()
    (await waiting).release()
    assert budget.in_use == 0


@scenario
async def test_a_wait_past_the_deadline_is_504_and_leaves_the_queue():
    budget, held = await holding(10, 10)
    with pytest.raises(DeadlineExceeded):
        await budget.reserve(5, later(0.0))
    assert budget.waiting == 0
    held.release()
    assert budget.in_use == 0


@scenario
async def test_a_cancelled_waiter_frees_its_place_and_lets_smaller_ones_in():
    budget, held = await holding(10, 6)
    blocked = asyncio.create_task(budget.reserve(8, later()))  # first in line, too big now
    behind = asyncio.create_task(budget.reserve(4, later()))
    await asyncio.sleep(0)
    assert budget.waiting == 2
    blocked.cancel()  # its client left
    (await behind).release()
    assert budget.waiting == 0
    held.release()
    assert budget.in_use == 0


@scenario
async def test_granted_as_it_gave_up_hands_the_bytes_on():
    budget, held = await holding(10, 10)
    waiter = asyncio.create_task(budget.reserve(10, later()))
    await asyncio.sleep(0)
    held.release()  # grants the waiter ...
    waiter.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.in_use == 0 and budget.waiting == 0


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("max\n", None, "host"),  # cgroup v2 without a limit
        ("17179869184\n", None, 16 << 30),  # a 16 GiB pod
        (None, "9223372036854771712\n", "host"),  # cgroup v1's "no limit"
        (None, "8589934592\n", 8 << 30),
        (None, None, "host"),  # no cgroup files: the machine's memory
    ],
)
def test_the_limit_is_the_containers_not_the_hosts(tmp_path, monkeypatch, v2, v1, expected):
    files = []
    for name, text in (("memory.max", v2), ("memory.limit_in_bytes", v1)):
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        files.append(path)
    monkeypatch.setattr(budget, "CGROUP_LIMITS", tuple(files))
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # a limit above the machine's memory limits nothing
    assert budget.memory_limit_bytes() == (host if expected == "host" else min(expected, host))
    assert budget.auto_budget_bytes(workers=2) == budget.memory_limit_bytes() // 4
