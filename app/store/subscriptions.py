"""One Akool job, many subscriptions (SPEC §8): whose row is polled for an id, and who follows it.

A subscription is one tenant's job row. Of the unfinished subscriptions to one `video_model_id`,
one *leads*: its row is claimed and polled like any job. The others *follow*: when the leader's poll
is written, they are locked with it and the same answer is decided for each of them on its own
(its own status from its own registration, events, transitions, deliveries, counts: the poller's
`_write`). Their `next_poll_at` shows the leader's; the claim skips them. So an id is polled once
however many tenants track it.

The lead moves (`hand_over`) when the leader ends while others still wait (cancelled, expired, or
failed by its own not-found count) and when its tenant is disabled. A new subscription to an id that
an enabled tenant's subscription already leads follows it, and makes it due at once, so it starts
like any new id (`join`). Only enabled tenants' subscriptions follow; a disabled tenant's stay as
they are, and lead again when it is enabled if nobody else does (`relead`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col

from app.models import Job, Tenant
from app.scheduling import QUEUED_STATUSES, PollClass


def waiting() -> sa.ColumnElement[bool]:
    return col(Job.next_poll_at).is_not(None)  # unfinished: the job table's CHECK ties it to status


def enabled_tenants() -> sa.Select[Any]:
    return sa.select(col(Tenant.id)).where(~col(Tenant.disabled))


def enabled() -> sa.ColumnElement[bool]:
    return col(Job.tenant_id).in_(enabled_tenants())


async def lock_for_poll(
    session: AsyncSession, ids: Iterable[int]
) -> tuple[dict[int, Job], dict[str, list[Job]]]:
    """Lock the claimed rows and every other enabled, unfinished subscription to their ids, in id
    order (the lock order of every writer that locks several jobs). Returns the claimed rows by id
    and the others by video_model_id."""
    claimed_ids = set(ids)
    vids = sa.select(col(Job.video_model_id)).where(col(Job.id).in_(claimed_ids))
    stmt = (
        sa.select(Job)
        .where(
            col(Job.video_model_id).in_(vids),  # ix_job_video_model_id: the claimed ids' rows alone
            sa.or_(col(Job.id).in_(claimed_ids), sa.and_(waiting(), enabled())),
        )
        .order_by(col(Job.id))
        .with_for_update()
    )
    claimed: dict[int, Job] = {}
    others: dict[str, list[Job]] = {}
    for job in await session.scalars(stmt):
        assert job.id is not None
        if job.id in claimed_ids:
            claimed[job.id] = job
        else:
            others.setdefault(job.video_model_id, []).append(job)
    return claimed, others


def follow(job: Job, leader: Job) -> None:
    """`job` after its share of `leader`'s poll: it follows (what Akool says is shared, the estimate
    too), its next poll is the leader's, and the claim leaves it to the leader."""
    job.leads = False
    job.push_due = False
    if job.next_poll_at is None or leader.next_poll_at is None:
        return  # it ended with this answer, or the leader did (and `hand_over` follows)
    job.progress_samples = leader.progress_samples
    job.expected_finish_at = leader.expected_finish_at
    job.next_poll_at, job.claim_at, job.poll_class = leader.next_poll_at, leader.claim_at, leader.poll_class


def hand_over(leader: Job, followers: Sequence[Job], now: datetime) -> Job | None:
    """The lead passes from `leader` (ended, or its tenant disabled) to the oldest follower still
    waiting, due at once with the leader's backoff and estimate. None when nobody waits."""
    heir = next((f for f in sorted(followers, key=lambda f: f.id or 0) if f.next_poll_at is not None), None)
    if heir is None:
        return None
    leader.leads = False
    heir.leads = True
    heir.poll_interval = leader.poll_interval
    heir.progress_samples, heir.expected_finish_at = leader.progress_samples, leader.expected_finish_at
    queued = heir.status in QUEUED_STATUSES
    heir.poll_class = int(PollClass.QUEUED if queued else PollClass.RUNNING)
    heir.next_poll_at = heir.claim_at = now
    return heir


async def lock_with_followers(session: AsyncSession, job: Job) -> tuple[Job, list[Job]]:
    """Lock `job` and the enabled, unfinished subscriptions to its id besides it, in id order."""
    rows = await session.scalars(
        sa.select(Job)
        .where(
            col(Job.video_model_id) == job.video_model_id,
            sa.or_(col(Job.id) == job.id, sa.and_(waiting(), enabled())),
        )
        .order_by(col(Job.id))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    locked = list(rows)
    return next(j for j in locked if j.id == job.id), [j for j in locked if j.id != job.id]


async def join(session: AsyncSession, tenant_id: int, vids: Sequence[str], now: datetime) -> None:
    """The tenant's new subscriptions to `vids` (just inserted, leading by default): where another
    enabled tenant's subscription leads an id, follow it, and make the leader due at once."""
    if not vids:
        return
    leaders = await session.scalars(
        sa.select(Job)
        .where(
            col(Job.video_model_id).in_(vids),
            col(Job.tenant_id) != tenant_id,
            col(Job.leads),
            waiting(),
            enabled(),
        )
        .order_by(col(Job.id))
        .with_for_update()
    )
    led: list[str] = []
    for leader in leaders:
        assert leader.next_poll_at is not None and leader.claim_at is not None
        leader.next_poll_at, leader.claim_at = min(leader.next_poll_at, now), min(leader.claim_at, now)
        led.append(leader.video_model_id)
    if led:
        await session.execute(
            sa.update(Job)
            .where(col(Job.tenant_id) == tenant_id, col(Job.video_model_id).in_(led))
            .values(leads=False),
            execution_options={"synchronize_session": False},
        )


async def step_aside(session: AsyncSession, tenant_id: int, now: datetime) -> None:
    """The tenant is disabled (and flushed so): each id one of its subscriptions leads and another
    enabled tenant's follows passes to a follower. Two statements, however many jobs it has."""
    mine = [col(Job.tenant_id) == tenant_id, col(Job.leads), waiting()]
    led = sa.select(col(Job.video_model_id)).where(*mine)
    followed = sa.select(col(Job.video_model_id)).where(
        col(Job.video_model_id).in_(led), col(Job.tenant_id) != tenant_id, waiting(), enabled()
    )
    rows = await session.scalars(
        sa.select(Job)
        .where(col(Job.video_model_id).in_(followed), sa.or_(sa.and_(*mine), sa.and_(waiting(), enabled())))
        .order_by(col(Job.id))  # the lock order of every writer that locks several jobs
        .with_for_update()
    )
    by_id: dict[str, list[Job]] = {}
    for job in rows:
        by_id.setdefault(job.video_model_id, []).append(job)
    for subscribed in by_id.values():
        leader = next(j for j in subscribed if j.tenant_id == tenant_id)
        hand_over(leader, [j for j in subscribed if j is not leader], now)


async def relead(session: AsyncSession, tenant_id: int, now: datetime) -> None:
    """The tenant is enabled again: its unfinished subscriptions that nobody leads any more lead,
    due at once."""
    other = aliased(Job)
    led_by_another = (
        sa.select(col(other.id))
        .where(
            col(other.video_model_id) == col(Job.video_model_id),
            col(other.id) != col(Job.id),
            col(other.leads),
            col(other.next_poll_at).is_not(None),
            col(other.tenant_id).in_(enabled_tenants()),
        )
        .exists()
    )
    await session.execute(
        sa.update(Job)
        .where(col(Job.tenant_id) == tenant_id, ~col(Job.leads), waiting(), ~led_by_another)
        .values(leads=True, next_poll_at=now, claim_at=now),
        execution_options={"synchronize_session": False},
    )
