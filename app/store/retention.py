"""Retention's SQL: delete finished jobs whose deliveries are all settled, one short batch at a time.

A batch looks at the next `size` jobs by id (a primary-key range: as cheap on a table of 10^7 rows as
on one of 10^3) and deletes those that may go: terminal, finished before the cutoff, and with no event
still to be sent or retried. Children go first, one statement per table (attempts, transitions,
events), then the jobs; the count triggers see every deleted row, as for any other DELETE.

Where a pass stops, with no index on `finished_at`: a job finishes after it was registered, and ids
are handed out in registration order, so once a range reaches a job registered after the cutoff, no
later job can have finished before it. (Ids follow registration time up to the moment between reading
the clock and inserting; a job passed over by that is taken by the next pass.)

On PostgreSQL the candidates are picked with FOR UPDATE SKIP LOCKED: a job another transaction holds
(another replica's prune, a redelivery) is left for a later pass, never waited for. Every writer that
can make an event unsettled again (a redelivery) locks its job row first, so once we hold the rows
the condition is read again by a new statement, which sees whatever committed before our locks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models import AkoolRequests, Attempt, Event, Job, Transition


@dataclass(frozen=True)
class Deleted:
    """What housekeeping deleted: jobs with their transitions, events and attempts; idempotency keys."""

    jobs: int = 0
    transitions: int = 0
    events: int = 0
    attempts: int = 0
    idempotency_keys: int = 0
    credentials: int = 0  # revoked tokens and expired webhook secrets

    def __add__(self, other: Deleted) -> Deleted:
        return Deleted(
            self.jobs + other.jobs,
            self.transitions + other.transitions,
            self.events + other.events,
            self.attempts + other.attempts,
            self.idempotency_keys + other.idempotency_keys,
            self.credentials + other.credentials,
        )

    def __str__(self) -> str:
        return (
            f"{self.jobs:,} jobs ({self.transitions:,} transitions, {self.events:,} events, "
            f"{self.attempts:,} attempts) and {self.idempotency_keys:,} idempotency keys"
            + (f", {self.credentials:,} revoked tokens or expired secrets" if self.credentials else "")
        )


@dataclass(frozen=True)
class Batch:
    deleted: Deleted
    last_id: int  # the last job id the batch looked at: the next batch starts after it
    more: bool  # whether jobs after `last_id` may still be old enough


def _may_go(cutoff: datetime) -> sa.ColumnElement[bool]:
    unsettled = (
        sa.select(col(Event.id))
        .where(col(Event.job_id) == col(Job.id), col(Event.next_attempt_at).is_not(None))
        .exists()
    )
    return sa.and_(col(Job.next_poll_at).is_(None), col(Job.finished_at) < cutoff, ~unsettled)


async def delete_batch(session: AsyncSession, *, after: int, cutoff: datetime, size: int) -> Batch:
    """In one transaction: of the `size` jobs following id `after`, delete those that may go."""
    window = (
        sa.select(col(Job.id), col(Job.created_at))
        .where(col(Job.id) > after)
        .order_by(col(Job.id))
        .limit(size)
        .subquery()
    )
    seen, last_id, newest = (
        await session.execute(
            sa.select(sa.func.count(), sa.func.max(window.c.id), sa.func.max(window.c.created_at))
        )
    ).one()
    if not seen:
        return Batch(Deleted(), after, more=False)
    more = seen == size and newest < cutoff
    in_range = sa.and_(col(Job.id) > after, col(Job.id) <= last_id)
    picked = list(
        await session.scalars(
            sa.select(col(Job.id))
            .where(in_range, _may_go(cutoff))
            .order_by(col(Job.id))
            .with_for_update(skip_locked=True)
        )
    )
    if picked:
        # Read again now that the rows are ours (see the module's docstring).
        picked = list(
            await session.scalars(sa.select(col(Job.id)).where(col(Job.id).in_(picked), _may_go(cutoff)))
        )
    if not picked:
        return Batch(Deleted(), last_id, more)
    # Uncounted tables first: the counter rows the triggers lock (events, then jobs) are held from
    # their first change to the commit, and other writers drawing the same shard wait for them.
    events_of_jobs = sa.select(col(Event.id)).where(col(Event.job_id).in_(picked))
    attempts = await _delete(session, sa.delete(Attempt).where(col(Attempt.event_id).in_(events_of_jobs)))
    transitions = await _delete(session, sa.delete(Transition).where(col(Transition.job_id).in_(picked)))
    events = await _delete(session, sa.delete(Event).where(col(Event.job_id).in_(picked)))
    jobs = await _delete(session, sa.delete(Job).where(col(Job.id).in_(picked)))
    return Batch(Deleted(jobs, transitions, events, attempts), last_id, more)


async def _delete(session: AsyncSession, stmt: sa.Delete) -> int:
    result: Any = await session.execute(stmt, execution_options={"synchronize_session": False})
    return int(result.rowcount)


async def delete_old_request_counts(session: AsyncSession, *, older_than: datetime) -> int:
    """The Akool requests per minute (/stats) before `older_than`: a few rows a minute, one statement."""
    result: Any = await session.execute(
        sa.delete(AkoolRequests).where(col(AkoolRequests.minute) < older_than),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount)
