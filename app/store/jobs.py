"""The jobs the API reads and changes: register, read, list, summarize, change, cancel, redeliver.

Routes stay thin; everything here raises `errors.RelayError` subclasses for the client's mistakes.
Every function takes a `Scope` (SPEC §8): one tenant, whose jobs alone it sees (another tenant's job
is looked for by the same one query as an unknown id, and answers the same), or every tenant, for
an operator; an operator's view gives each job its `tenant`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel, col

from app import scheduling
from app.config import Settings
from app.db import Database
from app.errors import AmbiguousJob, JobNotFound, NothingToRedeliver
from app.models import (
    Attempt,
    Event,
    EventState,
    Job,
    JobStatus,
    StatusCount,
    Tenant,
    Transition,
    UpstreamHealth,
    utcnow,
)
from app.schemas import (
    AttemptPublic,
    BudgetUse,
    DeliveryPublic,
    JobCreate,
    JobDetail,
    JobPublic,
    JobsPage,
    JobUpdate,
    Summary,
    TransitionPublic,
    UpstreamSummary,
)
from app.states import Cancelled, JobView, apply_decision, decide
from app.store import subscriptions
from app.store.stats import spent_per_second


@dataclass(frozen=True)
class Scope:
    """Whose jobs a request sees: one tenant's (`tenant_id`), or every tenant's (None); and whether it
    is an operator's view, where each job says its `tenant`."""

    tenant_id: int | None
    operator: bool


EVERYONE = Scope(tenant_id=None, operator=True)

# One executemany of a cached statement. RETURNING makes SQLAlchemy send it as multi-row INSERTs of up
# to 1,000 rows ("insertmanyvalues"), so PostgreSQL's statement-level count trigger runs once per page,
# not once per row; and unlike `insert().values([...])` nothing is compiled per request.
JOB_TABLE = SQLModel.metadata.tables[Job.__tablename__]
INSERT_JOBS = sa.insert(JOB_TABLE).returning(JOB_TABLE.c.id)


def new_job_row(spec: JobCreate, tenant_id: int, now: datetime, settings: Settings) -> dict[str, Any]:
    queued = scheduling.PollClass.QUEUED  # pending: its first poll is claimed after running jobs
    return {
        "tenant_id": tenant_id,
        "video_model_id": spec.video_model_id,
        "status": JobStatus.PENDING.value,
        "callback_url": spec.callback_url,
        "events": list(spec.events),
        "client_metadata": spec.metadata,
        "created_at": now,
        "updated_at": now,
        "expires_at": now + timedelta(seconds=settings.job_timeout),
        "next_poll_at": now,  # poll it right away
        "poll_class": int(queued),
        "claim_at": scheduling.claim_at(now, queued, settings.poll_interval_max),
        "poll_interval": settings.poll_interval_min,
        "poll_count": 0,
        "not_found_count": 0,
        "delivery": "none",
    }


class Registered(Enum):
    """What registering an id found: the route turns it into 201, 200 or 409."""

    NEW = "new"
    SAME = "same"  # already tracked with the same callback URL
    CONFLICT = "conflict"  # already tracked with another callback URL


async def register(
    db: Database, settings: Settings, tenant_id: int, specs: Sequence[JobCreate]
) -> list[tuple[Registered, JobPublic]]:
    """Track each job for the tenant; returns what was found and the job (the existing one unless
    new), in order. Another tenant tracking the same id changes nothing here (SPEC §8)."""

    async def insert_new(session: AsyncSession) -> list[tuple[Registered, JobPublic]]:
        return await insert_new_jobs(session, settings, tenant_id, specs)

    try:
        return await db.run(insert_new, urgent=True)  # urgent: a client waits
    except IntegrityError:
        # Another replica registered one of these ids at the same moment; now we will see it.
        return await db.run(insert_new, urgent=True)


async def insert_new_jobs(
    session: AsyncSession, settings: Settings, tenant_id: int, specs: Sequence[JobCreate]
) -> list[tuple[Registered, JobPublic]]:
    """`register` in the caller's transaction."""
    now = utcnow()
    ids = {s.video_model_id for s in specs}
    existing: dict[str, tuple[str, JobPublic]] = {
        j.video_model_id: (j.callback_url, JobPublic.model_validate(j))
        for j in await session.scalars(
            sa.select(Job).where(col(Job.tenant_id) == tenant_id, col(Job.video_model_id).in_(ids))
        )
    }
    rows: list[dict[str, Any]] = []
    results: list[tuple[Registered, JobPublic]] = []
    for spec in specs:
        known = existing.get(spec.video_model_id)
        if known is None:
            row = new_job_row(spec, tenant_id, now, settings)
            rows.append(row)
            known = existing[spec.video_model_id] = (spec.callback_url, JobPublic.model_validate(row))
            results.append((Registered.NEW, known[1]))
        else:
            same = known[0] == spec.callback_url
            results.append((Registered.SAME if same else Registered.CONFLICT, known[1]))
    if rows:
        await session.execute(INSERT_JOBS, rows)
        # An id another tenant's subscription already leads: follow it (store/subscriptions.py).
        await subscriptions.join(session, tenant_id, [row["video_model_id"] for row in rows], now)
    return results


async def get_job(
    session: AsyncSession, scope: Scope, video_model_id: str, *, for_update: bool = False
) -> Job:
    """The job in scope: one query whether it is unknown or another tenant's (nothing to time)."""
    stmt = sa.select(Job).where(col(Job.video_model_id) == video_model_id).limit(2)
    if scope.tenant_id is not None:
        stmt = stmt.where(col(Job.tenant_id) == scope.tenant_id)
    if for_update:
        stmt = stmt.with_for_update()
    found = list(await session.scalars(stmt))
    if not found:
        raise JobNotFound()
    if len(found) > 1:  # an operator, and several tenants track this id
        raise AmbiguousJob()
    return found[0]


async def tenant_names(session: AsyncSession) -> dict[int, str]:
    rows = await session.execute(sa.select(col(Tenant.id), col(Tenant.name)))
    return {i: n for i, n in rows if i is not None}


def public(job: Job, names: dict[int, str] | None) -> JobPublic:
    """The job's JSON; with `names` (an operator's view), its tenant's name too."""
    view = JobPublic.model_validate(job)
    if names is not None:
        view.tenant = names.get(job.tenant_id)
    return view


async def detail(db: Database, scope: Scope, video_model_id: str) -> JobDetail:
    async with db.read() as session:
        job = await get_job(session, scope, video_model_id)
        names = await tenant_names(session) if scope.operator else None
        transitions = await session.scalars(
            sa.select(Transition).where(col(Transition.job_id) == job.id).order_by(col(Transition.id))
        )
        events = list(
            await session.scalars(sa.select(Event).where(col(Event.job_id) == job.id).order_by(col(Event.id)))
        )
        attempts: dict[int, list[AttemptPublic]] = {}
        if events:
            rows = await session.scalars(
                sa.select(Attempt)
                .where(col(Attempt.event_id).in_([e.id for e in events]))
                .order_by(col(Attempt.id))
            )
            for a in rows:
                attempts.setdefault(a.event_id, []).append(AttemptPublic.model_validate(a))
    return JobDetail(
        **public(job, names).model_dump(),
        transitions=[
            TransitionPublic(
                from_status=t.from_status, to_status=t.to_status, at=t.at, progress=t.progress, via=t.via
            )
            for t in transitions
        ],
        deliveries=[
            DeliveryPublic(
                webhook_id=e.webhook_id,
                type=e.type,
                state=e.state,
                created_at=e.created_at,
                next_attempt_at=e.next_attempt_at,
                delivered_at=e.delivered_at,
                attempts=attempts.get(e.id or 0, []),
            )
            for e in events
        ],
    )


async def update(db: Database, scope: Scope, video_model_id: str, change: JobUpdate) -> JobPublic:
    async with db.write(urgent=True) as session:  # a client waits
        job = await get_job(session, scope, video_model_id, for_update=True)
        names = await tenant_names(session) if scope.operator else None
        if change.callback_url is not None:
            job.callback_url = change.callback_url
        if change.metadata is not None:
            job.client_metadata = change.metadata
        if change.events is not None:
            job.events = list(change.events)
        job.updated_at = utcnow()
    return public(job, names)


async def cancel(db: Database, settings: Settings, scope: Scope, video_model_id: str) -> None:
    """Stop tracking: the job becomes `cancelled` (a finished job stays as it is)."""
    async with db.write(urgent=True) as session:  # a client waits
        job = await get_job(session, scope, video_model_id)
        # Locked with the other subscriptions to the id, in id order: it may lead them.
        job, followers = await subscriptions.lock_with_followers(session, job)
        view = JobView(JobStatus(job.status), job.progress, tuple(job.events))
        now = utcnow()
        decision = decide(view, Cancelled(), now, settings.not_found_grace)
        if decision.transitions:
            apply_decision(session, job, decision, now, settings, polled=False, via="client")
            if job.leads:
                subscriptions.hand_over(job, followers, now)


async def redeliver(db: Database, scope: Scope, video_model_id: str) -> Event:
    """Queue the job's latest event again, same webhook-id, with a fresh retry schedule."""
    async with db.write(urgent=True) as session:  # a client waits
        job = await get_job(session, scope, video_model_id, for_update=True)
        event = await session.scalar(
            sa.select(Event)
            .where(col(Event.job_id) == job.id)
            .order_by(col(Event.id).desc())
            .limit(1)
            .with_for_update()
        )
        if event is None:
            raise NothingToRedeliver()
        event.state = EventState.PENDING
        event.attempts = 0
        event.next_attempt_at = utcnow()
        event.locked_until = None
        event.lease_token = None
        event.bulk = False  # someone asked for this one: it goes as a live callback
        job.delivery = EventState.PENDING
    return event


@dataclass(frozen=True)
class JobFilter:
    """GET /jobs' filters besides the scope; the summary ignores them (SPEC §3)."""

    statuses: list[JobStatus] = field(default_factory=list)
    q: str | None = None  # a video_model_id or its prefix
    since: datetime | None = None  # registered at or after
    until: datetime | None = None  # registered before

    def where(self) -> list[Any]:
        terms: list[Any] = []
        if self.statuses:
            terms.append(col(Job.status).in_([s.value for s in self.statuses]))
        if self.q:
            # A prefix as an index range (ix_job_video_model_id; with a tenant, the unique
            # (tenant_id, video_model_id) index), not LIKE over every row. Ids are ASCII, so every id
            # that starts with q sorts below q + U+10FFFF; the exact prefix test keeps a collation
            # that sorts otherwise from adding rows (the range may then miss some).
            terms += [
                col(Job.video_model_id) >= self.q,
                col(Job.video_model_id) < self.q + PREFIX_END,
                sa.func.substr(col(Job.video_model_id), 1, len(self.q)) == self.q,
            ]
        if self.since is not None:
            terms.append(col(Job.created_at) >= self.since)
        if self.until is not None:
            terms.append(col(Job.created_at) < self.until)
        return terms


PREFIX_END = chr(0x10FFFF)  # the highest code point: above every character of an id


async def page(
    db: Database, scope: Scope, found: JobFilter, limit: int, before: int | None, *, rate: float | None = None
) -> tuple[JobsPage, int | None]:
    """A page of the scope's jobs, newest first, from before row `before`; with the row id the next
    page starts before (None on the last page), for the route to seal into a cursor. `rate`: the
    Akool request rate in force, for the summary's budget."""
    async with db.read() as session:
        stmt = sa.select(Job).where(*found.where()).order_by(col(Job.id).desc()).limit(limit + 1)
        if scope.tenant_id is not None:
            stmt = stmt.where(col(Job.tenant_id) == scope.tenant_id)
        if before is not None:
            stmt = stmt.where(col(Job.id) < before)
        jobs = list(await session.scalars(stmt))
        counts = await summarize(session, scope, rate=rate)
        names = await tenant_names(session) if scope.operator else None
    more = len(jobs) > limit
    jobs = jobs[:limit]
    items = [public(j, names) for j in jobs]
    return JobsPage(summary=counts, items=items, next_cursor=None), (jobs[-1].id if more and jobs else None)


async def summary(db: Database, scope: Scope) -> Summary:
    async with db.read() as session:
        return await summarize(session, scope)


async def summarize(session: AsyncSession, scope: Scope, *, rate: float | None = None) -> Summary:
    """The summary of the scope's jobs; with `rate` (the Akool request rate in force), the budget's use."""
    jobs = {s.value: 0 for s in JobStatus}
    deliveries = {s.value: 0 for s in EventState}
    counters = {"job": jobs, "event": deliveries}
    totals = sa.select(
        col(StatusCount.kind), col(StatusCount.status), sa.func.sum(col(StatusCount.n))
    ).group_by(col(StatusCount.kind), col(StatusCount.status))
    if scope.tenant_id is not None:
        totals = totals.where(col(StatusCount.tenant_id) == scope.tenant_id)
    for kind, status, n in await session.execute(totals):
        counters[kind][status] = int(n)
    first_unfinished = sa.select(col(Job.created_at)).where(col(Job.next_poll_at).is_not(None))
    if scope.tenant_id is not None:  # ix_job_tenant_unfinished_id; ix_job_unfinished_id for all
        first_unfinished = first_unfinished.where(col(Job.tenant_id) == scope.tenant_id)
    oldest = await session.scalar(first_unfinished.order_by(col(Job.id)).limit(1))
    health = await session.get(UpstreamHealth, 1) or UpstreamHealth()
    budget = None
    if rate is not None:
        budget = BudgetUse(rate=round(rate, 3), spent_per_second=await spent_per_second(session, utcnow()))
    return Summary(
        jobs=jobs,
        deliveries=deliveries,
        oldest_unfinished_age_seconds=round((utcnow() - oldest).total_seconds(), 3) if oldest else None,
        upstream=UpstreamSummary(
            state=health.state,
            reason=health.reason,
            last_success_at=health.last_success_at,
            consecutive_errors=health.consecutive_errors,
            budget=budget,
        ),
    )
