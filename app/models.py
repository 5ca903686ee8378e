"""SQLModel tables. The rules that must always hold live in the schema too (CHECK constraints).

Invariants worth knowing:
- `job.next_poll_at` is NULL exactly when the job is terminal, so "due" is one index range scan.
- `event.next_attempt_at` is NULL exactly when the event is settled (delivered or dead).
- A lease is `locked_until` + `lease_token`: whoever holds the token may write the result until the
  lease runs out; a crashed process's lease simply expires and the row is due again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, hands out aware UTC: the same on SQLite (no tz support) and PostgreSQL."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class JobStatus(StrEnum):
    PENDING = "pending"  # registered, not yet seen upstream
    QUEUEING = "queueing"  # Akool video_status 1
    PROCESSING = "processing"  # Akool video_status 2
    COMPLETED = "completed"  # Akool video_status 3 (terminal)
    FAILED = "failed"  # Akool video_status 4, or "does not exist" past the grace (terminal)
    EXPIRED = "expired"  # RELAY_JOB_TIMEOUT passed before it finished (terminal)
    CANCELLED = "cancelled"  # stopped by the client; no event is sent (terminal)


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED})


class EventState(StrEnum):
    PENDING = "pending"  # written, never tried
    RETRYING = "retrying"  # tried and failed; next_attempt_at says when again
    DELIVERED = "delivered"  # a 2xx answer came back (settled)
    DEAD = "dead"  # the retry schedule ran out or the receiver said 410 (settled; /redeliver revives)


UNSETTLED_EVENT_STATES = (EventState.PENDING, EventState.RETRYING)

DEFAULT_EVENTS = ["completed", "failed", "expired"]


POLL_CLASSES = (0, 1, 2)  # app.scheduling.PollClass: finish passed, running, queued


def _in(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in sorted(values))})"


DEFAULT_TENANT_ID = 1  # the built-in tenant `default` (migration 0007): RELAY_API_TOKENS' tenant


class Tenant(SQLModel, table=True):
    """One client of the relay (SPEC §8): its own tokens, webhook secrets and jobs."""

    __tablename__ = "tenant"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, sa_column_kwargs={"unique": True}, nullable=False)
    disabled: bool = Field(default=False, nullable=False, sa_column_kwargs={"server_default": sa.false()})
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class TenantToken(SQLModel, table=True):
    """A bearer token, kept as its SHA-256 (a high-entropy token needs no slow hash). `source` is `env`
    for RELAY_API_TOKENS (managed there: the API will not revoke it) and `api` otherwise."""

    __tablename__ = "tenant_token"

    id: str = Field(primary_key=True, max_length=32)
    tenant_id: int = Field(foreign_key="tenant.id", index=True, nullable=False, ondelete="CASCADE")
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True}, nullable=False)
    prefix: str = Field(max_length=16, nullable=False)  # the first characters, to tell tokens apart
    source: str = Field(default="api", max_length=8, nullable=False)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)


class TenantSecret(SQLModel, table=True):
    """A webhook signing secret. The current one has `valid_until` NULL; a rotated-out one signs too
    until `valid_until` (SPEC §8). RELAY_WEBHOOK_SECRET is never stored: it is `default`'s while set."""

    __tablename__ = "tenant_secret"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True, nullable=False, ondelete="CASCADE")
    secret: str = Field(sa_type=sa.Text, nullable=False)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    valid_until: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Job(SQLModel, table=True):
    """A tenant's subscription to one Akool job: unique per (tenant, video_model_id)."""

    __tablename__ = "job"
    __table_args__ = (
        sa.UniqueConstraint("tenant_id", "video_model_id", name="uq_job_tenant_video_model_id"),
        # Pushes name the Akool id alone: every tenant's subscription to it.
        sa.Index("ix_job_video_model_id", "video_model_id"),
        # A tenant's dashboard: its jobs newest first, by status, and its oldest unfinished one.
        sa.Index("ix_job_tenant_id_id", "tenant_id", "id"),
        sa.Index("ix_job_tenant_id_status_id", "tenant_id", "status", "id"),
        sa.Index(
            "ix_job_tenant_unfinished_id",
            "tenant_id",
            "id",
            postgresql_where=sa.text("next_poll_at IS NOT NULL"),
            sqlite_where=sa.text("next_poll_at IS NOT NULL"),
        ),
        sa.CheckConstraint(
            f"({_in('status', TERMINAL_STATUSES)}) = (next_poll_at IS NULL)", name="job_terminal_not_due"
        ),
        sa.Index("ix_job_status_id", "status", "id"),
        # The dashboard's "oldest unfinished job" is the first entry of this small index.
        sa.Index(
            "ix_job_unfinished_id",
            "id",
            postgresql_where=sa.text("next_poll_at IS NOT NULL"),
            sqlite_where=sa.text("next_poll_at IS NOT NULL"),
        ),
        # The jobs a push made due, claimed before the others: a scan of a few rows. SQLite uses a
        # partial index only for a query that has its WHERE term as written: `push_due = 1` there.
        sa.Index(
            "ix_job_push_due_next_poll_at",
            "next_poll_at",
            postgresql_where=sa.text("push_due"),
            sqlite_where=sa.text("push_due = 1"),
        ),
        # The claim's other scans: one range per tenant and poll class, earliest due first
        # (app/scheduling.py). One partial index per class, not (poll_class, next_poll_at):
        # PostgreSQL's generic plan then cannot prefer ix_job_next_poll_at filtered by class, which
        # reads every due row of the other classes when this one is rare. The claim writes the class
        # as a literal to match.
        *(
            sa.Index(
                f"ix_job_tenant_next_poll_at_class_{klass}",
                "tenant_id",
                "next_poll_at",
                postgresql_where=sa.text(f"poll_class = {klass} AND next_poll_at IS NOT NULL"),
                sqlite_where=sa.text(f"poll_class = {klass} AND next_poll_at IS NOT NULL"),
            )
            for klass in POLL_CLASSES
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(
        default=DEFAULT_TENANT_ID,
        foreign_key="tenant.id",
        nullable=False,
        sa_column_kwargs={"server_default": str(DEFAULT_TENANT_ID)},
    )
    video_model_id: str = Field(max_length=64, nullable=False)
    status: str = Field(default=JobStatus.PENDING, max_length=16, nullable=False)
    video_status: int | None = None
    progress: int | None = None
    video_url: str | None = None
    error_code: int | None = Field(default=None, sa_type=sa.BigInteger)
    error_reason: str | None = None
    audio_splits: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    upstream: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)

    callback_url: str = Field(max_length=2048, nullable=False)
    events: list[str] = Field(sa_type=sa.JSON, nullable=False)
    client_metadata: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)

    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    last_polled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    next_poll_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    poll_count: int = Field(default=0, nullable=False)
    poll_interval: float = Field(nullable=False)  # current backoff interval, seconds
    not_found_count: int = Field(default=0, nullable=False)  # "does not exist" answers in a row
    not_found_since: datetime | None = Field(default=None, sa_type=UTCDateTime)

    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_token: str | None = Field(default=None, max_length=32)

    delivery: str = Field(default="none", max_length=16, nullable=False)  # state of the latest event

    # Akool's pushes (a hint, never a fact: only a poll changes the status).
    push_count: int = Field(default=0, nullable=False, sa_column_kwargs={"server_default": "0"})
    last_pushed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # A push made the job due: its next poll goes first, and what it finds says `via: push`.
    push_due: bool = Field(default=False, nullable=False, sa_column_kwargs={"server_default": sa.false()})
    push_due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # when a push last did
    # An ending push (status 3 or 4) already made it due: a second one is limited like the others.
    ending_push_seen: bool = Field(
        default=False, nullable=False, sa_column_kwargs={"server_default": sa.false()}
    )
    # One Akool job, many subscriptions (SPEC §8, app/store/subscriptions.py): of the unfinished
    # subscriptions to one id, one leads (its row is polled); the others follow (each poll's answer
    # is applied to them too, and their own next_poll_at is their deadline).
    leads: bool = Field(default=True, nullable=False, sa_column_kwargs={"server_default": sa.true()})

    # Prediction and priority (app/scheduling.py). The last few [Unix seconds, progress] samples taken
    # while processing; the estimate made of them (NULL when progress says nothing).
    progress_samples: list[list[float]] | None = Field(default=None, sa_type=sa.JSON)
    expected_finish_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The next poll's class (0 finish passed, 1 running, 2 queued) and its claim order key,
    # next_poll_at + class × RELAY_POLL_INTERVAL_MAX / 2 (NULL when terminal, like next_poll_at).
    poll_class: int = Field(
        default=1, nullable=False, sa_type=sa.SmallInteger, sa_column_kwargs={"server_default": "1"}
    )
    claim_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Transition(SQLModel, table=True):
    __tablename__ = "transition"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True, nullable=False, ondelete="CASCADE")
    from_status: str = Field(max_length=16, nullable=False)
    to_status: str = Field(max_length=16, nullable=False)
    at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    progress: int | None = None
    via: str = Field(
        default="poll", max_length=8, nullable=False, sa_column_kwargs={"server_default": "poll"}
    )  # what taught us: poll, push (a poll a push asked for), clock (expired), client (cancelled)


class Event(SQLModel, table=True):
    """The outbox: one row per callback to send; its body is fixed when the change happens."""

    __tablename__ = "event"
    __table_args__ = (
        sa.CheckConstraint(
            f"({_in('state', UNSETTLED_EVENT_STATES)}) = (next_attempt_at IS NOT NULL)",
            name="event_unsettled_due",
        ),
        sa.Index("ix_event_job_id_id", "job_id", "id"),
        # The outbox's claim: live callbacks first, then what a bulk redelivery queued, each earliest
        # due first (store/events.claim_due). Unsettled events only: a small index.
        sa.Index(
            "ix_event_due_bulk_next_attempt_at",
            "bulk",
            "next_attempt_at",
            postgresql_where=sa.text("next_attempt_at IS NOT NULL"),
            sqlite_where=sa.text("next_attempt_at IS NOT NULL"),
        ),
        # GET /deliveries of one tenant, by state, newest first.
        sa.Index("ix_event_tenant_id_state_id", "tenant_id", "state", "id"),
        # /stats' deliveries per minute and their latency, read from the index alone.
        sa.Index("ix_event_delivered_at", "delivered_at", "tenant_id", "latency_ms"),
    )

    id: int | None = Field(default=None, primary_key=True)
    webhook_id: str = Field(max_length=40, sa_column_kwargs={"unique": True}, nullable=False)
    job_id: int = Field(foreign_key="job.id", nullable=False, ondelete="CASCADE")
    # The job's tenant, copied: the count triggers and the tenant's delivery views read it off the row.
    tenant_id: int = Field(
        default=DEFAULT_TENANT_ID, nullable=False, sa_column_kwargs={"server_default": str(DEFAULT_TENANT_ID)}
    )
    type: str = Field(max_length=32, nullable=False)
    body: str = Field(sa_type=sa.Text, nullable=False)
    state: str = Field(default=EventState.PENDING, max_length=16, nullable=False, index=True)
    attempts: int = Field(default=0, nullable=False)  # attempts since created or last redelivered
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    latency_ms: float | None = None  # created → delivered, set with delivered_at (GET /stats)
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_token: str | None = Field(default=None, max_length=32)
    pushed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # the push it follows from
    # Queued again by a bulk redelivery (POST /deliveries/redeliver): claimed after live callbacks.
    bulk: bool = Field(default=False, nullable=False, sa_column_kwargs={"server_default": sa.false()})


class Attempt(SQLModel, table=True):
    __tablename__ = "attempt"

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(foreign_key="event.id", index=True, nullable=False, ondelete="CASCADE")
    at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)  # /stats: failed per minute
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    duration_ms: float = Field(nullable=False)
    response_excerpt: str | None = Field(default=None, max_length=1024)


# /stats: jobs finished per minute by status, read from the index alone. Beside the Job class, not
# in it: the console's index (issue 13).
_job = Job.__table__.c  # type: ignore[attr-defined]
JOB_FINISHED_AT_INDEX = sa.Index("ix_job_finished_at", _job.finished_at, _job.tenant_id, _job.status)


class AkoolRequests(SQLModel, table=True):
    """Akool requests per minute and outcome (an `AnswerKind`), every replica's, for /stats and the
    summary's budget use; upserted by the poller's health recording, pruned after a day (SPEC §6)."""

    __tablename__ = "akool_requests"

    minute: datetime = Field(sa_type=UTCDateTime, primary_key=True)
    outcome: str = Field(primary_key=True, max_length=16)
    n: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)


class UpstreamHealth(SQLModel, table=True):
    """One row (id=1) shared by every replica: whether Akool is accepting our requests."""

    __tablename__ = "upstream_health"

    id: int = Field(default=1, primary_key=True)
    state: str = Field(default="ok", max_length=16, nullable=False)  # ok / throttled / auth_failed
    reason: str | None = Field(default=None, max_length=300)
    last_success_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    consecutive_errors: int = Field(default=0, nullable=False)
    updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class StatusCount(SQLModel, table=True):
    """How many jobs are in each status and events in each state, kept by database triggers.

    The dashboard sums these few rows instead of counting 10^5 jobs; the triggers (migration 0002)
    change them in the same transaction as the row they count, so they never drift.
    Needed by: GET /jobs p99 ≤ 50 ms at 100,000 jobs (`make bench`); the shards (one per transaction,
    migration 0003) by the 3-replica test, whose registrations deadlocked on one counter row each.
    """

    __tablename__ = "status_count"

    tenant_id: int = Field(primary_key=True)  # counted per tenant; no foreign key (counted, not owned)
    kind: str = Field(primary_key=True, max_length=16)  # the table counted: "job" or "event"
    status: str = Field(primary_key=True, max_length=16)
    shard: int = Field(primary_key=True)  # a count is the sum over its shards (less lock contention)
    n: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)


class KeptValue(SQLModel, table=True):
    """Values the service generates once and keeps (the webhook secret). Not configuration: that is
    `config.Settings`; the table keeps its first name, `setting`."""

    __tablename__ = "setting"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_type=sa.Text, nullable=False)


class AkoolCreate(SQLModel, table=True):
    """One `POST /translations` per Idempotency-Key, written before Akool is asked (never twice)."""

    __tablename__ = "akool_create"

    key: str = Field(primary_key=True, max_length=128)
    request_hash: str = Field(max_length=64, nullable=False)  # SHA-256 of the canonical request body
    state: str = Field(max_length=16, nullable=False)  # in_progress, done (response kept), failed
    status_code: int | None = None  # of the kept answer
    response: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    updated_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class AkoolBudget(SQLModel, table=True):
    """One row (id=1): the deployment's Akool request budget on PostgreSQL, a token bucket kept on the
    database's clock (app/worker/budget.py says how replicas lease from it; SQLite leaves it unused).

    `tokens` holds at most one (no burst beyond one request); below zero it counts the request slots
    already leased ahead of `refilled_at`. `rate` is the rate in force: RELAY_AKOOL_RATE_LIMIT, or
    less after a 1005 (halved, then doubled back once per quiet cool-down from `throttled_until`).
    """

    __tablename__ = "akool_budget"

    id: int = Field(default=1, primary_key=True)
    rate: float = Field(nullable=False)  # requests per second in force
    tokens: float = Field(nullable=False)
    refilled_at: datetime = Field(sa_type=UTCDateTime, nullable=False)  # the database's clock
    throttled_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    halved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # 1005s within 1 s halve once


def utcnow() -> datetime:
    return datetime.now(UTC)
