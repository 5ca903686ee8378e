"""Keeps a loop's work flowing: claim rows from the database while slots are free, run each item.

The poller and the outbox are both a `Pump`: `claim(n)` leases up to n due rows, `work(item)` does
one and writes its result. The scheduler's tick calls `fill()`; a finished item wakes it too, so a
busy loop does not wait for the next tick, and `wake()` lets another loop say "there is work now".
`adopt()` starts items another loop leased for us (the poller hands over new events it leased in its
own transaction). `run_once()` is the step-by-step entry for tests: claim one batch and finish it.
A pump made with `driven=True` does nothing by itself: no wakes, no room for adoption; only
`run_once()` moves it, so a test decides every step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Pump(Generic[T]):
    def __init__(
        self,
        name: str,
        claim: Callable[[int], Awaitable[list[T]]],
        work: Callable[[T], Awaitable[None]],
        release: Callable[[list[T]], Awaitable[None]],
        capacity: int,
        *,
        driven: bool = False,
    ) -> None:
        self.name = name
        self.driven = driven
        self._claim = claim
        self._work = work
        self._release = release
        self.capacity = capacity
        self._inflight: dict[asyncio.Task[None], T] = {}
        self._filling = False
        self._again = False
        self._closed = False
        self._background: set[asyncio.Task[object]] = set()  # wakes (claims) and give-backs

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def room(self) -> int:
        """Free slots (none once closed): how many items another loop may lease for `adopt()`."""
        if self._closed or self.driven:
            return 0
        return max(0, self.capacity - len(self._inflight))

    def adopt(self, items: list[T]) -> int:
        """Work on leased items, as many as there are free slots; give the rest back. Returns how
        many were started.

        Items leased by another loop (or by a claim) were counted against free slots that someone
        else may have taken meanwhile. What is given back (everything once closed) is released at
        once, so a claim takes it soon instead of waiting for its lease to expire.
        """
        take = [] if self._closed else items[: self.room]
        for item in take:
            self._start(item)
        if rest := items[len(take) :]:
            task = asyncio.get_running_loop().create_task(self._give_back(rest))
            self._background.add(task)  # close() waits for these, as for claims in progress
            task.add_done_callback(self._background.discard)
        return len(take)

    async def _give_back(self, items: list[T]) -> None:
        try:
            await self._release(items)
        except Exception:
            log.exception("%s: giving back %d items failed; their leases expire", self.name, len(items))
        else:
            self.wake()  # claim them back as soon as slots free up (a no-op once closed)

    def _start(self, item: T) -> None:
        task = asyncio.create_task(self._guarded(item), name=f"{self.name}-work")
        self._inflight[task] = item
        task.add_done_callback(self._done)

    async def fill(self) -> int:
        """Claim work for every free slot; returns how many items were started."""
        if self._closed:
            return 0
        if self._filling:  # a fill is running: make it go round once more
            self._again = True
            return 0
        self._filling = True
        started = 0
        try:
            while not self._closed:
                self._again = False
                free = self.capacity - len(self._inflight)
                if free <= 0:
                    break
                items = await self._claim(free)
                started += self.adopt(items)  # slots handed over meanwhile are not ours to fill
                if len(items) < free and not self._again:
                    break
        except Exception:
            log.exception("%s: claiming work failed; the next tick tries again", self.name)
        finally:
            self._filling = False
        return started

    def wake(self) -> None:
        if self._closed or self.driven:
            return
        task = asyncio.get_running_loop().create_task(self.fill())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        # Refill in batches (half the slots free), not one claim per finished item.
        if len(self._inflight) <= self.capacity // 2:
            self.wake()

    async def _guarded(self, item: T) -> None:
        try:
            await self._work(item)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: an item failed; its lease will expire and it comes back", self.name)

    async def run_once(self) -> int:
        """Claim one batch and finish all of it (tests and burst runs)."""
        items = await self._claim(self.capacity)
        await asyncio.gather(*(self._guarded(item) for item in items))
        return len(items)

    def stop_claiming(self) -> None:
        """Take no new work from now on (in-flight work carries on; close() waits for it)."""
        self._closed = True

    async def close(self, timeout: float) -> None:
        """Stop claiming; let in-flight work finish within `timeout`, then cancel and release the rest."""
        self._closed = True
        # Claims and give-backs finish (cancelled mid-query, a lease would be stranded); a claim that
        # ends now gives its items back, which starts one more.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._background and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._background), timeout=left)
        pending = set(self._inflight)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        leftovers = [self._inflight[t] for t in pending if t in self._inflight]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if leftovers:
            log.info("%s: releasing %d unfinished items at shutdown", self.name, len(leftovers))
            await self._release(leftovers)
