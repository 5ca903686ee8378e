"""The poller's SQL: claim due jobs by lease, give them back, lock the rows a poll batch writes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db import Database
from app.models import Job
from app.store import leases


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    video_model_id: str
    expires_at: datetime
    token: str
    claimed_at: datetime


async def claim_due(
    db: Database, n: int, now: datetime, lease_seconds: float, *, expiring_only: bool, probe: bool
) -> list[ClaimedJob]:
    """Lease up to `n` due jobs: those a push made due first, then the earliest due.

    `expiring_only`: only jobs past their deadline (polling is paused, but jobs still expire on time);
    `probe`: one more due job besides, whose poll finds out whether Akool accepts us again.
    """
    due = sa.select(col(Job.id)).where(col(Job.next_poll_at) <= now, leases.lease_free(Job, now))
    earliest = col(Job.next_poll_at)
    batches = []
    if expiring_only:
        batches.append(due.where(col(Job.expires_at) <= now).order_by(earliest).limit(n))
        if probe:
            batches.append(due.order_by(earliest).limit(1))
    else:
        # Two index scans, not one sort: the pushed jobs (a partial index of a few rows), then the rest.
        batches.append(due.where(col(Job.push_due)).order_by(earliest).limit(n))
        batches.append(due.order_by(earliest).limit(n))
    claimed: list[ClaimedJob] = []
    returning = [Job.id, Job.video_model_id, Job.expires_at]
    async with db.write() as session:
        for batch in batches:
            if len(claimed) >= n:
                break
            token, rows = await leases.claim(
                session,
                Job,
                batch.limit(n - len(claimed)),
                now=now,
                lease_seconds=lease_seconds,
                returning=returning,
            )
            claimed.extend(ClaimedJob(r.id, r.video_model_id, r.expires_at, token, now) for r in rows)
    return claimed


async def release(db: Database, items: Iterable[ClaimedJob]) -> None:
    async with db.write() as session:
        await leases.release(session, Job, [(i.id, i.token) for i in items])


async def lock_jobs(session: AsyncSession, ids: Iterable[int]) -> dict[int, Job]:
    """Load and lock job rows for a poll batch, in id order, as every writer that locks several does."""
    stmt = sa.select(Job).where(col(Job.id).in_(sorted(ids))).order_by(col(Job.id)).with_for_update()
    return {job.id: job for job in await session.scalars(stmt) if job.id is not None}
