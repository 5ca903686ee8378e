"""Whether we may lean on Akool right now: the shared health row.

`UpstreamHealth` (the table, one row) is what every replica reads before polling: when Akool refuses
our credentials or account, polling pauses for everyone and a single probe per interval finds out when
it accepts again. How fast we may ask (RELAY_AKOOL_RATE_LIMIT, slowed by 1005) is app/worker/budget.py.
"""

from __future__ import annotations

from collections import Counter

from app.akool import PAUSING, AnswerKind, PollResult
from app.db import Database
from app.models import UpstreamHealth, utcnow
from app.store.stats import record_requests
from app.store.upstream import read_health, write_health

# Answers that show Akool accepted our request (whatever it said about the job).
ANSWERED = frozenset({AnswerKind.OK, AnswerKind.NOT_FOUND})


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
        """Fold a batch of poll results into the shared row (one small write per batch, if any), and
        count them by outcome in the minute's Akool requests (/stats, the summary's budget use)."""
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
        await record_requests(self._db, Counter(r.kind.value for r in results), now)
        values: dict[str, object] = {"state": state, "reason": reason, "updated_at": now}
        last_errors = None
        if answered:  # errors after the last good answer are the consecutive ones
            values["last_success_at"] = now
            last_errors = len(results) - 1 - answered[-1]
        await write_health(self._db, values, errors_seen=len(results), last_errors=last_errors)
