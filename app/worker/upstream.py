"""How hard we may lean on Akool right now: the process's rate limiter and the shared health row.

- `RateLimiter`: a token bucket at RELAY_AKOOL_RATE_LIMIT. A 1005 answer halves the rate for a
  cool-down; each quiet cool-down after that doubles it back towards the configured rate.
- `UpstreamHealth` (the table, one row) is what every replica reads before polling: when Akool
  refuses our credentials or account, polling pauses for everyone and a single probe per interval
  finds out when it accepts again.
"""

from __future__ import annotations

import asyncio
import time

from app.akool import PAUSING, AnswerKind, PollResult
from app.db import Database
from app.models import UpstreamHealth, utcnow
from app.store.upstream import read_health, write_health

# Answers that show Akool accepted our request (whatever it said about the job).
ANSWERED = frozenset({AnswerKind.OK, AnswerKind.NOT_FOUND})
THROTTLE_FLOOR = 0.05  # never slow below 1/20 of the configured rate
SLOWDOWN_DEBOUNCE = 1.0  # seconds: 1005 answers closer together than this halve the rate once


class RateLimiter:
    def __init__(self, rate: float, cooldown: float) -> None:
        self.base_rate = rate
        self.rate = rate
        self.cooldown = cooldown
        self._next_slot = time.monotonic()
        self._calm_at = 0.0  # when the current slow-down may be relaxed
        self._halved_at = -SLOWDOWN_DEBOUNCE
        self._lock = asyncio.Lock()

    @property
    def throttled(self) -> bool:
        self._relax(time.monotonic())
        return self.rate < self.base_rate

    def _relax(self, now: float) -> None:
        """Double the rate back once per quiet cool-down that has passed, busy or idle."""
        if self.rate < self.base_rate and now >= self._calm_at:
            steps = min(64, int((now - self._calm_at) // self.cooldown) + 1)
            self.rate = min(self.base_rate, self.rate * 2**steps)
            self._calm_at = now + self.cooldown

    async def acquire(self) -> None:
        """Wait for the next request slot (slots are 1/rate apart; no bursts beyond one).

        A slot is taken only when it is due, never reserved ahead: a slow-down then applies to
        every waiting request at once, not after a backlog of slots booked at the old rate.
        """
        while True:
            async with self._lock:
                now = time.monotonic()
                self._relax(now)
                if now >= self._next_slot:
                    self._next_slot = now + 1.0 / self.rate
                    return
                wait = self._next_slot - now
            await asyncio.sleep(wait)

    def slow_down(self) -> None:
        """Halve the rate on a 1005; the answers of one burst (all in flight together) count once."""
        now = time.monotonic()
        if now - self._halved_at >= SLOWDOWN_DEBOUNCE:
            self.rate = max(self.base_rate * THROTTLE_FLOOR, self.rate / 2)
            self._halved_at = now
        self._calm_at = now + self.cooldown
        self._next_slot = max(self._next_slot, now + 1.0 / self.rate)


class HealthTracker:
    """This process's view of the upstream, written to the shared row after each batch of polls."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.state = "ok"
        self.reason: str | None = None
        self.paused = False

    async def refresh(self) -> UpstreamHealth:
        """Read the shared row (another replica may have seen Akool refuse or accept again)."""
        row = await read_health(self._db)
        self.state, self.reason = row.state, row.reason
        self.paused = row.state == AnswerKind.AUTH_FAILED.value
        return row

    async def record(self, results: list[PollResult], throttled: bool) -> None:
        """Fold a batch of poll results into the shared row (one small write per batch, if any)."""
        answered = [i for i, r in enumerate(results) if r.kind in ANSWERED]
        pausing = [i for i, r in enumerate(results) if r.kind in PAUSING]
        reason: str | None
        if pausing and (not answered or pausing[-1] > answered[-1]):  # the latest word was a refusal
            state, reason = "auth_failed", results[pausing[-1]].detail
        elif self.paused and not answered:  # still paused: only an accepted request resumes
            state, reason = "auth_failed", self.reason
        elif throttled:
            state, reason = "throttled", "Akool answered 1005 (too frequent); requests slowed down"
        else:
            state, reason = "ok", None
        if not results and state == self.state:
            return  # nothing new to share
        self.state, self.reason, self.paused = state, reason, state == "auth_failed"
        now = utcnow()
        values: dict[str, object] = {"state": state, "reason": reason, "updated_at": now}
        last_errors = None
        if answered:  # errors after the last good answer are the consecutive ones
            values["last_success_at"] = now
            last_errors = len(results) - 1 - answered[-1]
        await write_health(self._db, values, errors_seen=len(results), last_errors=last_errors)
