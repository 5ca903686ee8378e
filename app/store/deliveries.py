"""Deliveries across jobs: GET /deliveries (events by state and time, newest first) and bulk redelivery.

Both take the same filter (`DeliveryFilter`) and a `Scope`: a tenant sees and redelivers its own
events only; another tenant's are as if they did not exist.

Bulk redelivery resets each matching event as POST /jobs/{id}/redeliver does (pending, attempts 0,
due now, lease cleared, same webhook-id), marked `bulk`: the outbox claims live callbacks before
bulk ones and keeps some slots free for them (store/events.claim_due). It goes through the matches
in id order, BATCH events per transaction, so 10,000 of them never hold the one SQLite writer (or
their job rows on PostgreSQL) for long: polls and attempt records waiting for the lock go between
batches (background priority). Order per job needs nothing more: a job's later event is not claimed
while an earlier one is unsettled, so its redelivered events go out oldest first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db import Database
from app.models import Attempt, Event, EventState, Job, utcnow
from app.schemas import AttemptPublic, DeliveriesPage, DeliveryItem
from app.store import leases
from app.store.jobs import Scope, tenant_names

# Events reset per transaction. Measured on 2 shared CPUs (benchmarks/ none: tests/integration/
# test_bulk_redelivery.py's 10,000): about 25 ms per 500 on SQLite, the count triggers included.
BATCH = 500


@dataclass(frozen=True)
class DeliveryFilter:
    states: list[EventState] = field(default_factory=list)  # empty: every state
    since: datetime | None = None  # event.created_at at or after
    until: datetime | None = None  # event.created_at before

    def where(self, scope: Scope) -> list[Any]:
        terms: list[Any] = []
        if scope.tenant_id is not None:
            terms.append(col(Event.tenant_id) == scope.tenant_id)
        if self.states:
            terms.append(col(Event.state).in_([s.value for s in self.states]))
        if self.since is not None:
            terms.append(col(Event.created_at) >= self.since)
        if self.until is not None:
            terms.append(col(Event.created_at) < self.until)
        return terms


async def page(
    db: Database, scope: Scope, found: DeliveryFilter, limit: int, before: int | None
) -> tuple[DeliveriesPage, int | None]:
    """A page of the scope's matching events, newest first, from before row `before`; with the row id
    the next page starts before (None on the last page), for the route to seal into a cursor."""
    async with db.read() as session:
        stmt = (
            sa.select(Event, col(Job.video_model_id))
            .join(Job, col(Job.id) == col(Event.job_id))
            .where(*found.where(scope))
            .order_by(col(Event.id).desc())
            .limit(limit + 1)
        )
        if before is not None:
            stmt = stmt.where(col(Event.id) < before)
        rows = list((await session.execute(stmt)).all())
        more = len(rows) > limit
        rows = rows[:limit]
        last = await _last_attempts(session, [e.id for e, _ in rows if e.id is not None])
        names = await tenant_names(session) if scope.operator else None
    items = [
        DeliveryItem(
            webhook_id=e.webhook_id,
            video_model_id=vid,
            type=e.type,
            state=e.state,
            attempts=e.attempts,
            created_at=e.created_at,
            delivered_at=e.delivered_at,
            next_attempt_at=e.next_attempt_at,
            last_attempt=last.get(e.id or 0),
            tenant=None if names is None else names.get(e.tenant_id),
        )
        for e, vid in rows
    ]
    next_before = rows[-1][0].id if more and rows else None
    return DeliveriesPage(items=items, next_cursor=None), next_before


async def _last_attempts(session: AsyncSession, event_ids: list[int]) -> dict[int, AttemptPublic]:
    if not event_ids:
        return {}
    latest = (
        sa.select(sa.func.max(col(Attempt.id)))
        .where(col(Attempt.event_id).in_(event_ids))
        .group_by(col(Attempt.event_id))
    )
    attempts = await session.scalars(sa.select(Attempt).where(col(Attempt.id).in_(latest)))
    return {a.event_id: AttemptPublic.model_validate(a) for a in attempts}


def _redeliverable(scope: Scope, found: DeliveryFilter, now: datetime) -> list[Any]:
    # Not one being sent right now (leased): resetting it would send it twice at once.
    return [*found.where(scope), leases.lease_free(Event, now)]


async def count(db: Database, scope: Scope, found: DeliveryFilter) -> int:
    """How many events a bulk redelivery with this filter would send again (its dry run)."""
    async with db.read() as session:
        n = await session.scalar(
            sa.select(sa.func.count()).select_from(Event).where(*_redeliverable(scope, found, utcnow()))
        )
    return int(n or 0)


async def redeliver(
    db: Database,
    scope: Scope,
    found: DeliveryFilter,
    *,
    batch: int = BATCH,
    after_batch: Callable[[], None] | None = None,
) -> int:
    """Queue every matching event again (same webhook-id), `batch` per transaction; returns how many.
    `after_batch` runs after each committed batch (the route wakes the outbox: sending starts at once).
    Events made after the call began are left alone: the filter is fixed at the highest id then."""
    async with db.read() as session:
        ceiling = await session.scalar(sa.select(sa.func.max(col(Event.id))))
    total, after = 0, 0
    while ceiling is not None and after < ceiling:

        async def one_batch(session: AsyncSession, after: int = after) -> tuple[int, int | None]:
            return await _redeliver_batch(session, scope, found, after, ceiling, batch)

        done, last = await db.run(one_batch)  # background priority: live writes go between batches
        total += done
        if last is None:
            break
        after = last
        if done and after_batch is not None:
            after_batch()
    return total


async def _redeliver_batch(
    session: AsyncSession, scope: Scope, found: DeliveryFilter, after: int, ceiling: int, size: int
) -> tuple[int, int | None]:
    """Reset the next `size` matching events after id `after`; returns how many and the last id seen
    (None when no match is left)."""
    now = utcnow()
    window = [col(Event.id) > after, col(Event.id) <= ceiling]
    picked = (
        await session.execute(
            sa.select(col(Event.id), col(Event.job_id))
            .where(*window, *_redeliverable(scope, found, now))
            .order_by(col(Event.id))
            .limit(size)
        )
    ).all()
    if not picked:
        return 0, None
    ids = [i for i, _ in picked]
    jobs = sorted({j for _, j in picked})
    # The job rows first, in id order, as every writer that makes an event unsettled locks them
    # (store/events.record_attempt, retention): the same lock order everywhere.
    await session.execute(
        sa.select(col(Job.id)).where(col(Job.id).in_(jobs)).order_by(col(Job.id)).with_for_update()
    )
    result: Any = await session.execute(
        sa.update(Event)
        .where(col(Event.id).in_(ids), *_redeliverable(scope, found, now))  # read again under the locks
        .values(
            state=EventState.PENDING,
            attempts=0,
            next_attempt_at=now,
            locked_until=None,
            lease_token=None,
            bulk=True,
        ),
        execution_options={"synchronize_session": False},
    )
    # job.delivery mirrors the job's latest event (store/events._mirror_delivery_state).
    latest = (
        sa.select(col(Event.state))
        .where(col(Event.job_id) == col(Job.id))
        .order_by(col(Event.id).desc())
        .limit(1)
        .scalar_subquery()
    )
    await session.execute(
        sa.update(Job).where(col(Job.id).in_(jobs)).values(delivery=latest),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount), ids[-1]
