"""The poller's SQL: claim due jobs by lease, give them back, lock the rows a poll batch writes.

The claim's order (SPEC §5, app/scheduling.py): the jobs a push made due first (a partial index of a
few rows), then by `claim_at` = next_poll_at + class × MAX over the classes finish passed, running,
queued. That second order is one statement, the same on every replica: one index range per class
(`ix_job_next_poll_at_class_N`: within a class claim_at follows next_poll_at, so each range is read
earliest due first and stops after n rows), merged by claim_at. At most 3n rows are read and
sorted, however many are due.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db import Database
from app.models import Job
from app.scheduling import PollClass
from app.store import leases


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    tenant_id: int
    video_model_id: str
    expires_at: datetime
    token: str
    claimed_at: datetime


async def claim_due(
    db: Database, n: int, now: datetime, lease_seconds: float, *, expiring_only: bool, probe: bool
) -> list[ClaimedJob]:
    """Lease up to `n` due jobs: those a push made due first, then by priority (`by_priority`).

    `expiring_only`: only jobs past their deadline (polling is paused, but jobs still expire on time);
    `probe`: one more due job besides, whose poll finds out whether Akool accepts us again.
    """
    due = sa.select(col(Job.id)).where(col(Job.next_poll_at) <= now, leases.lease_free(Job, now))
    earliest = col(Job.next_poll_at)
    batches: list[Callable[[int], sa.Select[Any]]] = []
    if expiring_only:
        batches.append(lambda k: due.where(col(Job.expires_at) <= now).order_by(earliest).limit(k))
        if probe:
            batches.append(lambda k: due.order_by(earliest).limit(1))
    else:
        # Index scans, not one sort: the pushed jobs (a partial index of a few rows), then the rest.
        batches.append(lambda k: due.where(col(Job.push_due)).order_by(earliest).limit(k))
        batches.append(lambda k: by_priority(now, k))
    claimed: list[ClaimedJob] = []
    returning = [Job.id, Job.tenant_id, Job.video_model_id, Job.expires_at]
    async with db.write() as session:
        for batch in batches:
            if len(claimed) >= n:
                break
            token, rows = await leases.claim(
                session,
                Job,
                batch(n - len(claimed)),
                now=now,
                lease_seconds=lease_seconds,
                returning=returning,
            )
            claimed.extend(
                ClaimedJob(r.id, r.tenant_id, r.video_model_id, r.expires_at, token, now) for r in rows
            )
    return claimed


def by_priority(now: datetime, n: int) -> sa.Select[Any]:
    """The ids of the first `n` due, unleased jobs by claim_at: the first n of each class (an index
    range each, earliest due first, rows another replica is claiming skipped), merged.

    PostgreSQL allows no FOR UPDATE over a UNION, so each class's range is a CTE that locks its own
    rows; the outer SELECT (which `leases.claim` locks too) only picks among rows we already hold.
    """
    ranges = [
        sa.select(col(Job.id), sa.func.coalesce(col(Job.claim_at), col(Job.next_poll_at)).label("claim_at"))
        .where(
            col(Job.poll_class) == sa.literal_column(str(int(klass))),  # as the partial index says it
            col(Job.next_poll_at) <= now,
            leases.lease_free(Job, now),
        )
        .order_by(col(Job.next_poll_at))
        .limit(n)
        .with_for_update(skip_locked=True)
        .cte(f"due_class_{int(klass)}")
        for klass in PollClass
    ]
    merged = sa.union_all(*(sa.select(r.c.id, r.c.claim_at) for r in ranges)).subquery("due")
    first = sa.select(merged.c.id).order_by(merged.c.claim_at, merged.c.id).limit(n)
    return sa.select(col(Job.id)).where(col(Job.id).in_(first))


async def next_due_at(db: Database, now: datetime) -> datetime | None:
    """When the next job falls due after `now` (the first entry of ix_job_next_poll_at after it)."""
    async with db.read() as session:
        return await session.scalar(
            sa.select(sa.func.min(col(Job.next_poll_at))).where(col(Job.next_poll_at) > now)
        )


async def release(db: Database, items: Iterable[ClaimedJob]) -> None:
    async with db.write() as session:
        await leases.release(session, Job, [(i.id, i.token) for i in items])


async def lock_jobs(session: AsyncSession, ids: Iterable[int]) -> dict[int, Job]:
    """Load and lock job rows for a poll batch, in id order, as every writer that locks several does."""
    stmt = sa.select(Job).where(col(Job.id).in_(sorted(ids))).order_by(col(Job.id)).with_for_update()
    return {job.id: job for job in await session.scalars(stmt) if job.id is not None}
