"""The delivery loop: claim due events (earliest first per job), send each, record the attempt.

An event is the outbox row written with the state change; each attempt adds an attempt row. A job's
later event is not claimable while an earlier one is unsettled, which keeps callbacks in order.

New events need not wait for a claim: the poller calls `lease_new()` in the transaction that writes
them, and `hand_over()` once it commits, so a callback goes out without a second turn of the write lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.config import Settings
from app.db import Database
from app.metrics import Metrics
from app.models import Attempt, Event, EventState, Job, utcnow
from app.webhooks import AttemptResult, WebhookSender
from app.store import leases
from app.worker.pump import Pump
from app.retry import honour_retry_after, jittered, retry_delay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedEvent:
    id: int
    job_id: int
    webhook_id: str
    body: str
    attempts: int
    token: str
    callback_url: str = ""


@dataclass(frozen=True)
class Handoff:
    """What a poll transaction leased for the outbox: events to send now, and whether others wait."""

    events: list[ClaimedEvent]
    waiting: bool


class Outbox:
    def __init__(self, settings: Settings, db: Database, sender: WebhookSender, metrics: Metrics) -> None:
        self.settings = settings
        self.db = db
        self.sender = sender
        self.metrics = metrics
        # A lease outlives the longest attempt, so an event is never sent twice at once.
        self.lease_seconds = max(settings.lease_seconds, settings.delivery_timeout * 2)
        self.pump: Pump[ClaimedEvent] = Pump(
            "outbox", self.claim, self.deliver, self.release, capacity=settings.poll_concurrency
        )

    def _wake(self) -> None:
        self.pump.wake()

    async def lease_new(self, session: AsyncSession, created: list[tuple[Job, list[Event]]]) -> Handoff:
        """In the caller's transaction: lease the new events that may go out at once, up to free slots.

        Only a job's first new event, and only when none of its earlier events is unsettled (the order
        claim() keeps); the rest are left for claim(), which the settling of the earlier event wakes.
        `waiting` says when the slots ran out instead. Flushes, so the leased events have their ids.
        """
        if not created:
            return Handoff([], waiting=False)
        with session.no_autoflush:  # earlier events only: the new ones are not inserted yet
            busy = set(
                (
                    await session.execute(
                        sa.select(Event.job_id)
                        .where(
                            Event.job_id.in_([job.id for job, _ in created]),
                            _unsettled(Event),
                        )
                        .distinct()
                    )
                ).scalars()
            )
        token, room = leases.new_token(), self.pump.room
        until = utcnow() + timedelta(seconds=self.lease_seconds)
        leased: list[tuple[Job, Event]] = []
        waiting = False
        for job, (first, *_) in created:
            if job.id in busy:
                continue
            if len(leased) >= room:
                waiting = True
                continue
            first.locked_until, first.lease_token = until, token
            leased.append((job, first))
        await session.flush()
        claimed = []
        for job, e in leased:
            assert e.id is not None, "flushed"
            claimed.append(
                ClaimedEvent(e.id, e.job_id, e.webhook_id, e.body, e.attempts, token, job.callback_url)
            )
        return Handoff(claimed, waiting)

    def hand_over(self, handoff: Handoff) -> None:
        """After the poll transaction committed: send what it leased, claim what it left."""
        self.pump.adopt(handoff.events)
        if handoff.waiting:
            self._wake()

    async def deliver_due(self) -> int:
        """Run-once entry: claim one batch of due events and send it."""
        return await self.pump.run_once()

    async def claim(self, n: int) -> list[ClaimedEvent]:
        now = utcnow()
        earlier = aliased(Event)
        blocked = (
            sa.select(earlier.id)
            .where(earlier.job_id == Event.job_id, earlier.id < Event.id, _unsettled(earlier))
            .exists()
        )
        due = (
            sa.select(Event.id)
            .where(Event.next_attempt_at <= now, leases.lease_free(Event, now), ~blocked)
            .order_by(Event.next_attempt_at)
            .limit(n)
        )
        returning = [Event.id, Event.job_id, Event.webhook_id, Event.body, Event.attempts]
        async with self.db.write() as session:
            token, rows = await leases.claim(
                session, Event, due, now=now, lease_seconds=self.lease_seconds, returning=returning
            )
            if not rows:
                return []
            urls = dict(
                (
                    await session.execute(
                        sa.select(Job.id, Job.callback_url).where(Job.id.in_({r.job_id for r in rows}))
                    )
                ).all()
            )
        return [
            ClaimedEvent(r.id, r.job_id, r.webhook_id, r.body, r.attempts, token, urls[r.job_id])
            for r in rows
        ]

    async def release(self, items: list[ClaimedEvent]) -> None:
        async with self.db.write() as session:
            await leases.release(session, Event, [(i.id, i.token) for i in items])

    async def deliver(self, item: ClaimedEvent) -> None:
        result: AttemptResult | None = None
        try:
            result = await self.sender.send(item.callback_url, item.webhook_id, item.body)
        finally:
            # Always keep the attempt, even when the send was interrupted.
            await self.record(item, result or AttemptResult(None, "interrupted", 0.0))

    async def record(self, item: ClaimedEvent, result: AttemptResult) -> None:
        """Decide what the attempt means for the event and write it."""
        now = utcnow()
        attempts = item.attempts + 1
        if result.ok:
            state, next_at, outcome = EventState.DELIVERED, None, "delivered"
        elif result.gone:
            state, next_at, outcome = EventState.DEAD, None, "gone"
        else:
            delay = retry_delay(attempts, self.settings.retry_schedule)
            if delay is None:
                state, next_at, outcome = EventState.DEAD, None, "dead"
            else:
                delay = honour_retry_after(jittered(delay), result.retry_after)
                state, next_at, outcome = EventState.RETRYING, now + timedelta(seconds=delay), "failed"
        self.metrics.deliveries.labels(outcome).inc()
        self.metrics.delivery_latency.observe(result.duration_ms / 1000)
        # Written at once, not group-committed: a result queued behind other writers could outlive
        # the event's lease, and another replica would send the callback again (seen on PostgreSQL).
        # Urgent: until it is written the outbox slot stays taken, and the next callback waits.
        kept = await self.db.run(
            lambda session: self._write(session, item, result, state, next_at, now), urgent=True
        )
        if kept and next_at is None:
            self._wake()  # settled (delivered or dead): the job's next event may be waiting on it

    async def _write(
        self,
        session: AsyncSession,
        item: ClaimedEvent,
        result: AttemptResult,
        state: EventState,
        next_at: datetime | None,
        now: datetime,
    ) -> bool:
        """The attempt row, and the event's new state if we still hold its lease (returns whether)."""
        # The job row first, as every writer locks: the same lock order everywhere.
        await session.execute(sa.select(Job.id).where(Job.id == item.job_id).with_for_update())
        updated = await session.execute(
            sa.update(Event)
            .where(Event.id == item.id, Event.lease_token == item.token)
            .values(
                state=state,
                attempts=item.attempts + 1,
                next_attempt_at=next_at,
                delivered_at=now if result.ok else None,
                locked_until=None,
                lease_token=None,
            ),
            execution_options={"synchronize_session": False},
        )
        session.add(
            Attempt(
                event_id=item.id,
                at=now,
                status_code=result.status_code,
                error=result.error,
                duration_ms=round(result.duration_ms, 3),
                response_excerpt=result.excerpt,
            )
        )
        if updated.rowcount != 1:
            log.warning("event %s: lease lost before the attempt was recorded", item.webhook_id)
            return False
        await _mirror_delivery_state(session, item.job_id, item.id, state)
        return True


def _unsettled(event: Any) -> sa.ColumnElement[bool]:
    """Still to be sent or retried: such an event holds back its job's later ones (claim, lease_new)."""
    return event.next_attempt_at.is_not(None)


async def _mirror_delivery_state(session: AsyncSession, job_id: int, event_id: int, state: str) -> None:
    """Keep job.delivery equal to the state of the job's latest event."""
    later = sa.select(Event.id).where(Event.job_id == job_id, Event.id > event_id).exists()
    await session.execute(
        sa.update(Job).where(Job.id == job_id, ~later).values(delivery=state),
        execution_options={"synchronize_session": False},
    )
