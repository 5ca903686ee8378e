"""The poller's SQL: claim due jobs by lease and give them back (the rows a poll batch writes are
locked by store/subscriptions.py).

The claim's order (SPEC §5, app/scheduling.py): the jobs a push made due first (a partial index of a
few rows), then by `claim_at` = next_poll_at + class × MAX/2 over the classes finish passed, running,
queued, tenants taking turns (SPEC §8, `scheduling.Turns`). Each tenant's due
jobs of a class are one index range (`ix_job_tenant_next_poll_at_class_N`, earliest due first, n rows
at most), so a claim reads at most 3n rows per tenant with waiting jobs, however many are due; only
tenants that are enabled and have waiting jobs (by the trigger-kept counts) are read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db import Database
from app.models import TERMINAL_STATUSES, Job, JobStatus, StatusCount, Tenant
from app.scheduling import DueJob, PollClass, Turns
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
    db: Database,
    n: int,
    now: datetime,
    lease_seconds: float,
    *,
    expiring_only: bool,
    probe: bool,
    turns: Turns | None = None,
) -> list[ClaimedJob]:
    """Lease up to `n` due jobs of enabled tenants: those a push made due first, then by priority,
    tenants taking `turns` (`by_priority`; the poller keeps them from claim to claim).

    `expiring_only`: only jobs past their deadline (polling is paused, but jobs still expire on time);
    `probe`: one more due job besides, whose poll finds out whether Akool accepts us again.
    """
    earliest = col(Job.next_poll_at)
    claimed: list[ClaimedJob] = []
    returning = [Job.id, Job.tenant_id, Job.video_model_id, Job.expires_at]
    async with db.write() as session:
        polled = await tenants_waiting(session)
        due = sa.select(col(Job.id)).where(
            col(Job.next_poll_at) <= now, leases.lease_free(Job, now), col(Job.tenant_id).in_(polled)
        )

        async def expiring(k: int) -> sa.Select[Any]:
            return due.where(col(Job.expires_at) <= now).order_by(earliest).limit(k)

        async def any_due(k: int) -> sa.Select[Any]:  # a probe: a poll, so a leader's
            return due.where(col(Job.leads)).order_by(earliest).limit(1)

        async def pushed(k: int) -> sa.Select[Any]:  # a partial index of a few rows; only leaders
            return due.where(col(Job.push_due)).order_by(earliest).limit(k)

        async def by_rank(k: int) -> sa.Select[Any]:
            return await by_priority(session, now, k, polled, turns or Turns())

        batches: list[Callable[[int], Awaitable[sa.Select[Any]]]] = [pushed, by_rank]
        if expiring_only:
            batches = [expiring, any_due] if probe else [expiring]
        for batch in batches:
            if len(claimed) >= n or not polled:
                break
            token, rows = await leases.claim(
                session,
                Job,
                await batch(n - len(claimed)),
                now=now,
                lease_seconds=lease_seconds,
                returning=returning,
            )
            claimed.extend(
                ClaimedJob(r.id, r.tenant_id, r.video_model_id, r.expires_at, token, now) for r in rows
            )
    return claimed


async def tenants_waiting(session: AsyncSession) -> list[int]:
    """The enabled tenants with jobs still waiting for a poll (from the trigger-kept counts: a few
    rows per tenant, not a look at the jobs). A disabled tenant's jobs are not polled (SPEC §8)."""
    waiting = [s.value for s in JobStatus if s not in TERMINAL_STATUSES]
    stmt = (
        sa.select(col(StatusCount.tenant_id))
        .join(Tenant, col(Tenant.id) == col(StatusCount.tenant_id))
        .where(col(StatusCount.kind) == "job", col(StatusCount.status).in_(waiting), ~col(Tenant.disabled))
        .group_by(col(StatusCount.tenant_id))
        .having(sa.func.sum(col(StatusCount.n)) > 0)
        .order_by(col(StatusCount.tenant_id))
    )
    return list(await session.scalars(stmt))


def due_ranges(now: datetime, n: int, tenant_ids: Iterable[int]) -> sa.CompoundSelect[Any]:
    """The first `n` due, unleased jobs of each tenant in each class (an index range each, earliest
    due first, rows another replica is claiming skipped), as (id, tenant_id, poll_class, claim_at).

    PostgreSQL allows no FOR UPDATE over a UNION, so each range is a CTE that locks its own rows.
    """
    ranges = [
        sa.select(
            col(Job.id),
            col(Job.tenant_id),
            col(Job.poll_class),
            sa.func.coalesce(col(Job.claim_at), col(Job.next_poll_at)).label("claim_at"),
        )
        .where(
            col(Job.tenant_id) == tenant,
            col(Job.poll_class) == sa.literal_column(str(int(klass))),  # as the partial index says it
            col(Job.next_poll_at) <= now,
            col(Job.leads),  # a follower is polled by its leader (store/subscriptions.py)
            leases.lease_free(Job, now),
        )
        .order_by(col(Job.next_poll_at))
        .limit(n)
        .with_for_update(skip_locked=True)
        .cte(f"due_{tenant}_{int(klass)}")
        for tenant in tenant_ids
        for klass in PollClass
    ]
    return sa.union_all(*(sa.select(r) for r in ranges))


async def by_priority(
    session: AsyncSession, now: datetime, n: int, tenant_ids: list[int], turns: Turns
) -> sa.Select[Any]:
    """The ids of the first `n` due jobs in claim order: each tenant's first n of each class
    (`due_ranges`, locked on PostgreSQL until the claim commits), put in order by `turns`."""
    rows = await session.execute(due_ranges(now, n, tenant_ids))
    due = [DueJob(r.id, r.tenant_id, r.poll_class, r.claim_at) for r in rows]
    return sa.select(col(Job.id)).where(col(Job.id).in_(turns.order(due, n)))


async def next_due_at(db: Database, now: datetime) -> datetime | None:
    """When the next job falls due after `now` (the first entry of ix_job_next_poll_at after it)."""
    async with db.read() as session:
        return await session.scalar(
            sa.select(sa.func.min(col(Job.next_poll_at))).where(col(Job.next_poll_at) > now)
        )


async def release(db: Database, items: Iterable[ClaimedJob]) -> None:
    async with db.write() as session:
        await leases.release(session, Job, [(i.id, i.token) for i in items])
