"""The Akool budget: RELAY_AKOOL_RATE_LIMIT requests per second for the whole deployment (SPEC §5).

Every Akool request (poll, getToken, create) first takes a slot: `await budget.acquire()`. A 1005
answer calls `budget.slow_down()`: the rate in force (`budget.rate`) halves for RELAY_THROTTLE_COOLDOWN,
then doubles back once per quiet cool-down; `budget.throttled` says whether it is below the
configured rate. `make_budget()` picks the kind:

- SQLite (one process): `LocalBudget`, the process's own slots, 1/rate apart (no burst beyond one).
- PostgreSQL (any number of replicas): `SharedBudget`, slots leased from one token bucket for the
  deployment, the `akool_budget` row (app/store/budget.py). The row is refilled on the database's
  clock. A lease is one UPDATE … RETURNING that grants a short run of slots, each due at a time of
  its own, 1/rate apart across all replicas. A replica spends the run without further round trips:
  one lease per SLICE (0.2 s) of slots at most, about five per second under saturation however many
  replicas share the budget.

How the shared budget keeps SPEC §5's promises:

- No slot is granted more than HORIZON (0.4 s) ahead of the database's now, and a slot not taken
  within EXPIRY (0.1 s) after its time is dropped. What all replicas hold unspent together is thus at
  most HORIZON + EXPIRY = 0.5 s worth (plus the bucket's one token). A crashed replica's slots pass
  unused: it can only make the deployment under-spend, for at most HORIZON.
- The slots of all replicas are one sequence 1/rate apart, so any window of T seconds holds at most
  rate × (T + EXPIRY) + 1 requests: a 5 s window is over the budget by 2 % plus the one token, and
  by network jitter, never by what the replicas hold.
- An idle replica leases nothing; a replica with waiting requests leases what they need, or its pace
  of the last second scaled to a slice when that is more (at most a slice), so a replica that stops
  polling (killed or idle) leaves the whole rate to the others within HORIZON. A static split
  (rate / replicas each) would leave two thirds of the budget unused when two of three replicas
  stop; tests/integration/test_shared_budget.py's negative check shows it.
- A 1005 seen by any replica halves the row's rate (1005s within SLOWDOWN_DEBOUNCE halve it once,
  whichever replicas saw them) and starts the cool-down in the row; every replica's next lease is at
  the new rate, within HORIZON. The replica that saw it drops the slots it held at once.
- The row's rate is capped by the asking replica's RELAY_AKOOL_RATE_LIMIT; a raised limit counts as
  a finished slow-down, so the rate follows a changed configuration after a rolling restart.

Why not a library: PyrateLimiter's PostgresBucket (checked in its source, pyrate_limiter/buckets/
postgres.py) is synchronous (`is_async = False`, a psycopg ConnectionPool), inserts one row per request
and takes `LOCK TABLE … IN EXCLUSIVE MODE NOWAIT` for every check, refusing whenever another replica
holds the lock: a round trip per request, the whole table serialised, and no notion of a rate that
halves on a 1005 and recovers. `limits` (alisaifee/limits, up to 5.8.0, the latest release) stores
counters in memory, Redis, Memcached, MongoDB or etcd only; an unmerged branch adds a synchronous
SQLAlchemy storage (fixed and moving windows on the application's clock), which is still a round trip
per request and has no lease, expiry or slow-down either.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from app.config import Settings
from app.db import Database
from app.store.budget import BudgetRow, Grant, LeaseTerms

log = logging.getLogger(__name__)

THROTTLE_FLOOR = 0.05  # never slow below 1/20 of the configured rate
SLOWDOWN_DEBOUNCE = 1.0  # seconds: 1005 answers closer together than this halve the rate once
SLICE = 0.2  # seconds of the rate one lease asks for at most
HORIZON = 0.4  # seconds: no slot is leased further ahead of the database's now
EXPIRY = 0.1  # seconds: a leased slot not taken this long after its time is dropped
DB_RETRY = 0.5  # seconds between leases while the database fails


class Budget(Protocol):
    base_rate: float  # RELAY_AKOOL_RATE_LIMIT

    @property
    def rate(self) -> float:
        """The rate in force (requests per second)."""

    @property
    def throttled(self) -> bool:
        """The rate in force is below the configured one (a 1005 slowed it down)."""

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now (the poller claims no more than the next moment's slots)."""

    async def acquire(self) -> None:
        """Wait for a request slot; call it before every Akool request."""

    def slow_down(self) -> None:
        """Akool answered 1005."""

    async def close(self) -> None:
        """Wait for what the budget is still writing (shutdown)."""


def make_budget(settings: Settings, db: Database) -> Budget:
    if db.is_sqlite:
        return LocalBudget(settings.akool_rate_limit, settings.throttle_cooldown)
    return SharedBudget(db, settings.akool_rate_limit, settings.throttle_cooldown)


def relaxed(
    rate: float, base: float, calm_at: float | None, now: float, cooldown: float
) -> tuple[float, float | None]:
    """The rate in force at `now` and when it may double next: once per quiet cool-down passed since
    `calm_at`, busy or idle, up to `base` (None: not slowed down). The row does the same in SQL."""
    rate = min(rate, base)
    if calm_at is None or rate >= base:
        return base, None
    if now < calm_at:
        return rate, calm_at
    steps = min(64, int((now - calm_at) // cooldown) + 1)
    rate = min(base, rate * 2**steps)
    return rate, None if rate >= base else calm_at + steps * cooldown


class _RateInForce:
    """The rate both budgets spend at: the configured one, halved by 1005s, relaxing back (`relaxed`)."""

    def __init__(self, rate: float, cooldown: float, clock: Callable[[], float]) -> None:
        self.base_rate = rate
        self.cooldown = cooldown
        self._clock = clock
        self._rate = rate
        self._calm_at: float | None = None  # when the current slow-down may relax
        self._halved_at = -math.inf

    @property
    def rate(self) -> float:
        self._rate, self._calm_at = relaxed(
            self._rate, self.base_rate, self._calm_at, self._clock(), self.cooldown
        )
        return self._rate

    @property
    def throttled(self) -> bool:
        return self.rate < self.base_rate


class LocalBudget(_RateInForce):
    """The process's own token bucket (SQLite): slots 1/rate apart, no burst beyond one."""

    def __init__(self, rate: float, cooldown: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rate, cooldown, clock)
        self._next_slot = clock()
        self._lock = asyncio.Lock()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    async def acquire(self) -> None:
        """Wait for the next request slot (slots are 1/rate apart).

        A slot is taken only when it is due, never reserved ahead: a slow-down then applies to
        every waiting request at once, not after a backlog of slots booked at the old rate.
        """
        self._waiting += 1
        try:
            while True:
                async with self._lock:
                    now = self._clock()
                    if now >= self._next_slot:
                        self._next_slot = now + 1.0 / self.rate
                        return
                    wait = self._next_slot - now
                await asyncio.sleep(wait)
        finally:
            self._waiting -= 1

    def slow_down(self) -> None:
        """Halve the rate on a 1005; the answers of one burst (all in flight together) count once."""
        now = self._clock()
        rate = self.rate
        if now - self._halved_at >= SLOWDOWN_DEBOUNCE:
            self._rate = rate = max(self.base_rate * THROTTLE_FLOOR, rate / 2)
            self._halved_at = now
        self._calm_at = now + self.cooldown
        self._next_slot = max(self._next_slot, now + 1.0 / rate)

    async def close(self) -> None:
        return None


class SharedBudget(_RateInForce):
    """Slots leased from the deployment's bucket (PostgreSQL); see the module docstring.

    Waiting requests take leased slots in order and sleep until their slot's time. When none is left,
    one of them leases for all who wait (up to a slice); the others wait on the lease lock. A lease
    refused because the horizon is full says when enough slots will fit, and the next one waits until
    then. Counters for tests and figures: `leases` (round trips), `granted`, `dropped` (slots let go:
    expired, or held when a 1005 came).
    """

    def __init__(
        self, db: Database, rate: float, cooldown: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(rate, cooldown, clock)
        self._row = BudgetRow(db)
        self._terms = LeaseTerms(
            base=rate, cooldown=cooldown, debounce=SLOWDOWN_DEBOUNCE, floor=THROTTLE_FLOOR, horizon=HORIZON
        )
        self._slots: deque[float] = deque()  # local times of leased slots nobody has taken yet
        self._queued = 0  # requests waiting without a slot
        self._sleeping = 0  # requests holding a slot whose time has not come
        self._taken: deque[float] = deque()  # when slots were taken in the last second (demand)
        self._lease_lock = asyncio.Lock()
        self._retry_at = -math.inf  # a refused lease: no new one before this
        self._halve = False  # a 1005 not yet recorded in the row
        self._slowdowns = 0
        self._db_failing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.leases = 0
        self.granted = 0
        self.dropped = 0

    @property
    def held(self) -> int:
        """Slots leased and not yet taken."""
        return len(self._slots)

    @property
    def waiting(self) -> int:
        return self._queued + self._sleeping

    async def acquire(self) -> None:
        self._queued += 1
        try:
            while True:
                now = self._clock()
                slot = self._take(now)
                if slot is not None:
                    break
                async with self._lease_lock:
                    if self._slots:
                        continue  # someone leased while we waited for the lock
                    wait = self._retry_at - self._clock()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await self._lease(self._want())
        finally:
            self._queued -= 1
        if slot > now:  # a slot leased ahead: still waiting for it
            self._sleeping += 1
            try:
                await asyncio.sleep(slot - now)
            finally:
                self._sleeping -= 1

    def _take(self, now: float) -> float | None:
        while self._slots and self._slots[0] + EXPIRY < now:
            self._slots.popleft()
            self.dropped += 1
        if not self._slots:
            return None
        self._taken.append(now)
        while self._taken[0] < now - 1.0:
            self._taken.popleft()
        return self._slots.popleft()

    def _want(self) -> int:
        """What this replica's demand needs: the requests waiting, or what it took in the last
        second scaled to a slice if more (a steady demand then costs a round trip per slice, not per
        request); never more than a slice."""
        expected = math.ceil(len(self._taken) * SLICE)
        return max(1, min(max(1, round(SLICE * self.rate)), max(self._queued, expected)))

    async def _lease(self, want: int) -> None:
        """One round trip: lease up to `want` slots (all or none) and record a pending 1005."""
        halve, self._halve = self._halve, False
        seen = self._slowdowns
        try:
            grant = await self._row.lease(self._terms, want=want, min_grant=want, halve=halve)
        except Exception as exc:
            self._halve = self._halve or halve
            self._retry_at = self._clock() + DB_RETRY
            if not self._db_failing:
                log.warning("leasing Akool request slots failed (%s); trying again", type(exc).__name__)
            self._db_failing = True
            return
        got = self._clock()  # the database's now was earlier: slots placed from here are never early
        self._db_failing = False
        self.leases += 1
        if self._slowdowns != seen and not halve:
            self.dropped += grant.granted  # a 1005 came meanwhile: these were leased at the old rate
            return
        self._follow(grant, got)
        for k in range(1, grant.granted + 1):
            self._slots.append(got + max(0.0, (k - grant.tokens) / grant.rate))
        self.granted += grant.granted
        if want and not grant.granted:  # the horizon is full: come back when `want` slots fit
            self._retry_at = got + max(0.001, (want - grant.tokens) / grant.rate - HORIZON)

    def _follow(self, grant: Grant, got: float) -> None:
        """Take the row's view of the rate, the cool-down and the last halving."""
        self._rate = grant.rate
        self._calm_at = None if grant.throttled_for is None else got + grant.throttled_for
        if grant.halved_ago is not None:
            self._halved_at = max(self._halved_at, got - grant.halved_ago)

    def slow_down(self) -> None:
        """A 1005: halve at once here (the answers of one burst count once), drop the slots held, and
        record it in the row for every replica (now, and with the next lease should that fail)."""
        now = self._clock()
        rate = self.rate
        if now - self._halved_at >= SLOWDOWN_DEBOUNCE:
            self._rate = max(self.base_rate * THROTTLE_FLOOR, rate / 2)
            self._halved_at = now
        self._calm_at = now + self.cooldown
        self.dropped += len(self._slots)
        self._slots.clear()
        self._halve = True
        self._slowdowns += 1
        if not self._tasks:
            task = asyncio.get_running_loop().create_task(self._record_slow_down())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _record_slow_down(self) -> None:
        async with self._lease_lock:
            if self._halve:
                await self._lease(0)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._row.close()
