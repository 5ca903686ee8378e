"""The SQLite writer's lock: urgent waiters first, FIFO within a class, cancellation never strands it."""

from __future__ import annotations

import asyncio

import pytest

from app.db import WriteLock


async def _queue_up(lock: WriteLock, order: list[str], name: str, *, urgent: bool) -> None:
    async with lock.held(urgent=urgent):
        order.append(name)
        await asyncio.sleep(0)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_urgent_waiters_go_first_and_each_class_keeps_its_order() -> None:
    lock, order = WriteLock(), list[str]()
    await lock.acquire(urgent=False)  # held: everyone below has to queue
    tasks = []
    for name, urgent in (("n1", False), ("u1", True), ("n2", False), ("u2", True)):
        tasks.append(asyncio.create_task(_queue_up(lock, order, name, urgent=urgent)))
        await _settle()
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["u1", "u2", "n1", "n2"]


async def test_a_free_lock_is_taken_at_once_and_freed_after_the_last_holder() -> None:
    lock = WriteLock()
    await asyncio.wait_for(lock.acquire(urgent=False), 1)
    lock.release()
    # Free again: a second acquire does not wait.
    await asyncio.wait_for(lock.acquire(urgent=True), 1)
    lock.release()


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    lock, order = WriteLock(), list[str]()
    await lock.acquire(urgent=False)
    doomed = asyncio.create_task(_queue_up(lock, order, "doomed", urgent=True))
    await _settle()
    later = asyncio.create_task(_queue_up(lock, order, "later", urgent=False))
    await _settle()
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    lock.release()
    await asyncio.wait_for(later, 1)
    assert order == ["later"]
    await asyncio.wait_for(lock.acquire(urgent=False), 1)  # not stranded


async def test_a_waiter_cancelled_just_as_it_is_handed_the_lock_passes_it_on() -> None:
    lock, order = WriteLock(), list[str]()
    await lock.acquire(urgent=False)
    handed = asyncio.create_task(_queue_up(lock, order, "handed", urgent=True))
    await _settle()
    later = asyncio.create_task(_queue_up(lock, order, "later", urgent=False))
    await _settle()
    lock.release()  # hands the lock to `handed`'s waiter; its task has not resumed yet
    handed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    await asyncio.wait_for(later, 1)
    assert order == ["later"]


async def test_a_waiter_cancelled_before_a_release_that_skips_it_still_sees_cancelled_error() -> None:
    lock, order = WriteLock(), list[str]()
    await lock.acquire(urgent=False)
    doomed = asyncio.create_task(_queue_up(lock, order, "doomed", urgent=True))
    await _settle()
    doomed.cancel()  # its future is cancelled now; the task has not run its except branch yet
    lock.release()  # skips (and drops) the cancelled future: the lock is free
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await asyncio.wait_for(lock.acquire(urgent=False), 1)
    assert order == []
