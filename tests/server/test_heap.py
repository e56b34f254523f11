"""Freed memory back to the OS: the trim waits for the budget to stay idle, a new request
cancels it, and on glibc the trim and the fixed threshold really run."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from server import heap
from server.budget import MemoryBudget
from server.heap import IdleTrim
from tests.server.test_budget import scenario

WAIT_S = 60  # only a broken trimmer waits this long


def later() -> float:
    return time.monotonic() + WAIT_S


@scenario
async def test_the_trim_runs_once_the_last_reservation_is_released():
    trimmed = asyncio.Event()
    loop = asyncio.get_running_loop()
    trimmer = IdleTrim(after_s=0.01, trim=lambda: loop.call_soon_threadsafe(trimmed.set))
    budget = MemoryBudget(100, max_waiting=4, heap=trimmer)
    first, second = await budget.reserve(60, later()), await budget.reserve(40, later())
    first.release()
    assert not trimmer.pending  # the second still holds memory
    second.release()
    assert trimmer.pending
    await asyncio.wait_for(trimmed.wait(), WAIT_S)
    assert trimmer.trims == 1 and not trimmer.pending


@scenario
async def test_a_request_before_the_trim_cancels_it():
    trimmer = IdleTrim(after_s=WAIT_S, trim=lambda: pytest.fail("trimmed while busy"))
    budget = MemoryBudget(100, max_waiting=4, heap=trimmer)
    (await budget.reserve(10, later())).release()
    assert trimmer.pending
    held = await budget.reserve(10, later())
    assert not trimmer.pending and trimmer.trims == 0
    held.release()
    assert trimmer.pending  # idle again: a new countdown
    trimmer.busy()


@scenario
async def test_a_waiter_granted_keeps_the_budget_busy():
    trimmer = IdleTrim(after_s=WAIT_S, trim=lambda: pytest.fail("trimmed while busy"))
    budget = MemoryBudget(100, max_waiting=4, heap=trimmer)
    held = await budget.reserve(100, later())
    waiting = asyncio.create_task(budget.reserve(50, later()))
    await asyncio.sleep(0)  # it queues
    held.release()  # hands the bytes straight to the waiter: never idle
    granted = await waiting
    assert not trimmer.pending
    granted.release()
    assert trimmer.pending
    trimmer.busy()


def test_the_settings_choose_the_policy():
    """On glibc (Linux, CI) ``idle`` is a trimmer; elsewhere there is nothing to call."""
    assert isinstance(heap.heap_policy("idle"), IdleTrim) is heap.is_glibc()
    assert heap.heap_policy("never") is None
    assert isinstance(heap.trim_heap(), bool)  # malloc_trim really ran (or, not glibc, False)


def test_always_fixes_the_threshold_in_a_fresh_process():
    """``always`` changes the process's allocator for good: run it in its own interpreter."""
    code = (
        "from server import heap; assert heap.heap_policy('always') is None; "
        "assert heap.fix_mmap_threshold() is heap.is_glibc()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
