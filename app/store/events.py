"""The outbox's SQL: events (one row per callback) and their attempts.

A job's later event is not claimable while an earlier one is unsettled (`_unsettled`), which keeps
callbacks in order; `claim_due` and `lease_new` both keep that rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col

from app.db import Database
from app.models import Attempt, Event, EventState, Job, utcnow
from app.store import leases
from app.webhooks import AttemptResult


@dataclass(frozen=True)
class ClaimedEvent:
    id: int
    job_id: int
    tenant_id: int  # whose secrets sign it
    webhook_id: str
    body: str
    attempts: int
    token: str
    callback_url: str
    video_model_id: str
    pushed_at: datetime | None = None  # the push this callback follows from
    created_at: datetime | None = None  # when the change happened: its latency's start


@dataclass(frozen=True)
class Handoff:
    """What a poll transaction leased for the outbox: events to send now, and whether others wait."""

    events: list[ClaimedEvent]
    waiting: bool


def _unsettled(event: Any) -> sa.ColumnElement[bool]:
    """Still to be sent or retried: such an event holds back its job's later ones."""
    return col(event.next_attempt_at).is_not(None)


async def lease_new(
    session: AsyncSession, created: list[tuple[Job, list[Event]]], *, room: int, lease_seconds: float
) -> Handoff:
    """In the poll transaction: lease the new events that may go out at once, up to `room`.

    Only a job's first new event, and only when none of its earlier events is unsettled (the order
    `claim_due` keeps); the rest are left for a claim, which the settling of the earlier event wakes.
    `waiting` says when the room ran out instead. Flushes, so the leased events have their ids.
    """
    if not created:
        return Handoff([], waiting=False)
    with session.no_autoflush:  # earlier events only: the new ones are not inserted yet
        busy = set(
            await session.scalars(
                sa.select(col(Event.job_id))
                .where(col(Event.job_id).in_([job.id for job, _ in created]), _unsettled(Event))
                .distinct()
            )
        )
    token = leases.new_token()
    until = utcnow() + timedelta(seconds=lease_seconds)
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
            ClaimedEvent(
                e.id,
                e.job_id,
                e.tenant_id,
                e.webhook_id,
                e.body,
                e.attempts,
                token,
                job.callback_url,
                job.video_model_id,
                e.pushed_at,
                e.created_at,
            )
        )
    return Handoff(claimed, waiting)


async def claim_due(
    db: Database, n: int, now: datetime, lease_seconds: float, *, keep_free: int = 0
) -> list[ClaimedEvent]:
    """Lease up to `n` due events, none behind an unsettled earlier one of its job: live callbacks
    first, earliest due first; then what a bulk redelivery queued, leaving `keep_free` of the `n`
    slots to live callbacks.

    Why two claims and a reserve, not a redelivery time: 10,000 redelivered events are all due at
    once, and by next_attempt_at alone a callback made a second later queues behind all of them; and
    when every slot holds a bulk event to a receiver that hangs until RELAY_DELIVERY_TIMEOUT, even
    the first claim of a fresh callback waits that long. With the reserve, bulk events never fill the
    last `keep_free` slots: a poll transaction leases a fresh callback into one at once
    (`lease_new`), and a claim takes the live ones before any bulk one (SPEC §3: live callbacks first).
    """
    earlier = aliased(Event)
    blocked = (
        sa.select(col(earlier.id))
        .where(col(earlier.job_id) == col(Event.job_id), col(earlier.id) < col(Event.id), _unsettled(earlier))
        .exists()
    )

    def due(bulk: bool, limit: int) -> sa.Select[Any]:
        # ix_event_due_bulk_next_attempt_at: one index range per kind, earliest due first.
        return (
            sa.select(col(Event.id))
            .where(
                col(Event.bulk) == bulk,
                col(Event.next_attempt_at) <= now,
                leases.lease_free(Event, now),
                ~blocked,
            )
            .order_by(col(Event.next_attempt_at))
            .limit(limit)
        )

    returning = [
        Event.id,
        Event.job_id,
        Event.tenant_id,
        Event.webhook_id,
        Event.body,
        Event.attempts,
        Event.pushed_at,
        Event.created_at,
    ]
    picked: list[tuple[str, sa.Row[Any]]] = []
    async with db.write() as session:
        for bulk in (False, True):
            room = n - len(picked) - (keep_free if bulk else 0)
            if room <= 0:
                break
            token, rows = await leases.claim(
                session, Event, due(bulk, room), now=now, lease_seconds=lease_seconds, returning=returning
            )
            picked += [(token, r) for r in rows]
        if not picked:
            return []
        jobs = {
            job_id: (url, video_model_id)
            for job_id, url, video_model_id in await session.execute(
                sa.select(col(Job.id), col(Job.callback_url), col(Job.video_model_id)).where(
                    col(Job.id).in_({r.job_id for _, r in picked})
                )
            )
        }
    return [
        ClaimedEvent(
            r.id,
            r.job_id,
            r.tenant_id,
            r.webhook_id,
            r.body,
            r.attempts,
            token,
            *jobs[r.job_id],
            r.pushed_at,
            r.created_at,
        )
        for token, r in picked
    ]


async def release(db: Database, items: Iterable[ClaimedEvent]) -> None:
    async with db.write() as session:
        await leases.release(session, Event, [(i.id, i.token) for i in items])


async def record_attempt(
    session: AsyncSession,
    item: ClaimedEvent,
    result: AttemptResult,
    state: EventState,
    next_at: datetime | None,
    now: datetime,
) -> bool:
    """The attempt row, and the event's new state if we still hold its lease (returns whether)."""
    latency_ms = None if item.created_at is None else round((now - item.created_at).total_seconds() * 1000, 3)
    # The job row first, as every writer locks: the same lock order everywhere.
    await session.execute(sa.select(col(Job.id)).where(col(Job.id) == item.job_id).with_for_update())
    updated = await session.execute(
        sa.update(Event)
        .where(col(Event.id) == item.id, col(Event.lease_token) == item.token)
        .values(
            state=state,
            attempts=item.attempts + 1,
            next_attempt_at=next_at,
            delivered_at=now if result.ok else None,
            # /stats' latency, kept so that its percentiles read one number per row (store/stats.py).
            latency_ms=latency_ms if result.ok else None,
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
    if getattr(updated, "rowcount", 0) != 1:
        return False
    await _mirror_delivery_state(session, item.job_id, item.id, state)
    return True


async def _mirror_delivery_state(session: AsyncSession, job_id: int, event_id: int, state: str) -> None:
    """Keep job.delivery equal to the state of the job's latest event."""
    later = sa.select(col(Event.id)).where(col(Event.job_id) == job_id, col(Event.id) > event_id).exists()
    await session.execute(
        sa.update(Job).where(col(Job.id) == job_id, ~later).values(delivery=state),
        execution_options={"synchronize_session": False},
    )
