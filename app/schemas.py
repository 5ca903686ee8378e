"""Request and response models of the HTTP API, and the job's JSON (shared with callbacks)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    computed_field,
    field_validator,
    model_serializer,
)

from app.models import DEFAULT_EVENTS, EventState, Job, JobStatus

ID_PATTERN = r"^[A-Za-z0-9_-]+$"
VideoModelId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN)]
TENANT_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
TenantName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TENANT_NAME_PATTERN)]
EventName = Literal["queueing", "processing", "progress", "completed", "failed", "expired"]
METADATA_MAX_BYTES = 16 * 1024
VIDEO_URL_LIFETIME = timedelta(days=7)  # how long Akool keeps a finished video's URL (SPEC §3)


def _check_url(value: str) -> str:
    # Syntax only here; whether the host is public is checked (asynchronously) by the service.
    from app.netguard import check_url_syntax

    check_url_syntax(value)
    return value


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(json.dumps(value, separators=(",", ":")).encode()) > METADATA_MAX_BYTES:
        raise ValueError(f"metadata must be at most {METADATA_MAX_BYTES} bytes as JSON")
    return value


def _dedupe(value: list[str]) -> list[str]:
    return list(dict.fromkeys(value))


def _as_utc(value: datetime) -> datetime:
    # SPEC §3: times are UTC; one written without an offset means UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UTCTime = Annotated[datetime, AfterValidator(_as_utc)]
CallbackURL = Annotated[str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_check_url)]
Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]
Events = Annotated[list[EventName], AfterValidator(_dedupe)]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    video_model_id: VideoModelId
    callback_url: CallbackURL
    metadata: Metadata = Field(default_factory=dict)
    events: Events = Field(default_factory=lambda: list(DEFAULT_EVENTS), min_length=1)  # type: ignore[arg-type]
    tenant: TenantName | None = Field(
        default=None, description="operators only: the owner's name (default `default`)"
    )


class JobUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    callback_url: CallbackURL | None = None
    metadata: Metadata | None = None
    events: Events | None = Field(default=None, min_length=1)


class JobBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[dict[str, Any]] = Field(min_length=1, max_length=1000)


class OperatorViewed(BaseModel):
    """A shape with fields only operators see (`OPERATOR_ONLY`): left out of the JSON when unset,
    so a tenant's view has no trace of them."""

    OPERATOR_ONLY: ClassVar[tuple[str, ...]] = ()

    # No return annotation on purpose: pydantic would take it as the JSON schema (a bare object).
    @model_serializer(mode="wrap")
    def _operator_only_when_set(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        data = handler(self)
        for key in self.OPERATOR_ONLY:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class JobPublic(OperatorViewed):
    """A job as clients see it. Read from a `Job` row or from the dict a new row is inserted from
    (`JobPublic.model_validate(...)`); what a new row lacks is None."""

    model_config = ConfigDict(from_attributes=True)
    OPERATOR_ONLY = ("tenant",)

    video_model_id: str
    status: str
    video_status: int | None = None
    progress: int | None = None
    video_url: str | None = None
    error_code: int | None = None
    error_reason: str | None = None
    audio_splits: dict[str, Any] | None = None
    callback_url: str
    events: list[str]
    metadata: dict[str, Any] = Field(validation_alias=AliasChoices("client_metadata", "metadata"))
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    last_polled_at: datetime | None = None
    next_poll_at: datetime | None = None
    poll_count: int
    delivery: str
    push_count: int = 0
    last_pushed_at: datetime | None = None
    expected_finish_at: datetime | None = None  # the relay's estimate (app/scheduling.py); null without
    tenant: str | None = Field(default=None, description="the owner's name; in operators' views only")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def video_url_expires_at(self) -> datetime | None:
        """When `video_url` stops working: 7 days after completion; None without a URL."""
        if self.status != JobStatus.COMPLETED or not self.video_url or self.finished_at is None:
            return None
        return self.finished_at + VIDEO_URL_LIFETIME


class TransitionPublic(BaseModel):
    from_status: str = Field(serialization_alias="from")
    to_status: str = Field(serialization_alias="to")
    at: datetime
    progress: int | None
    via: str


class AttemptPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float
    response_excerpt: str | None = None  # the first KiB of the receiver's answer


class DeliveryPublic(BaseModel):
    webhook_id: str
    type: str
    state: str
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    attempts: list[AttemptPublic]


class JobDetail(JobPublic):
    transitions: list[TransitionPublic]
    deliveries: list[DeliveryPublic]


class BatchItem(BaseModel):
    status: int  # the HTTP status this item would have had on its own
    job: JobPublic | None = None
    detail: Any = None


class BatchResult(BaseModel):
    results: list[BatchItem]


class BudgetUse(BaseModel):
    rate: float  # Akool requests per second in force now (RELAY_AKOOL_RATE_LIMIT, halved by a 1005)
    spent_per_second: float  # every replica's Akool requests per second over the last minute


class UpstreamSummary(BaseModel):
    state: str
    reason: str | None
    last_success_at: datetime | None
    consecutive_errors: int
    budget: BudgetUse | None = None  # in GET /jobs' summary


class Summary(BaseModel):
    jobs: dict[str, int]
    deliveries: dict[str, int]
    oldest_unfinished_age_seconds: float | None
    upstream: UpstreamSummary


class JobsPage(BaseModel):
    summary: Summary
    items: list[JobPublic]
    next_cursor: str | None


class DeliveryItem(OperatorViewed):
    """An event as GET /deliveries lists it."""

    OPERATOR_ONLY = ("tenant",)

    webhook_id: str
    video_model_id: str
    type: str
    state: str
    attempts: int  # since it was made or last redelivered
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    last_attempt: AttemptPublic | None
    tenant: str | None = Field(default=None, description="the owner's name; in operators' views only")


class DeliveriesPage(BaseModel):
    items: list[DeliveryItem]
    next_cursor: str | None


class BulkRedelivery(BaseModel):
    """POST /deliveries/redeliver: the filter GET /deliveries takes; every event it matches is sent again."""

    model_config = ConfigDict(extra="forbid")

    state: list[EventState] = Field(
        default_factory=lambda: [EventState.DEAD],
        min_length=1,
        description="one state or a list (default dead)",
    )
    since: UTCTime | None = Field(default=None, description="events made at or after")
    until: UTCTime | None = Field(default=None, description="events made before")
    tenant: TenantName | None = Field(default=None, description="operators only: one tenant's events")
    dry_run: bool = False

    @field_validator("state", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class RedeliveryCount(BaseModel):
    count: int


class StatsBucket(OperatorViewed):
    OPERATOR_ONLY = ("akool_requests",)

    at: datetime  # the minute's start
    finished: dict[str, int]  # jobs whose finished_at falls in the minute, by status
    delivered: int  # events delivered in the minute
    attempts_failed: int  # attempts made in the minute that did not get a 2xx
    latency_p50_ms: float | None  # event made → delivered, of those delivered in the minute
    latency_p99_ms: float | None
    akool_requests: dict[str, int] | None = Field(
        default=None, description="Akool requests by outcome; in operators' views only"
    )


class Stats(BaseModel):
    minutes: int
    buckets: list[StatsBucket]  # one per minute of the window, oldest first


def _check_translate_body(value: dict[str, Any]) -> dict[str, Any]:
    # Akool's two required fields (SPEC §1); the rest goes to Akool as given.
    for field in ("url", "language"):
        if not isinstance(value.get(field), str) or not value[field].strip():
            raise ValueError(f"akool.{field} is required (a non-empty string)")
    return value


class TranslationCreate(BaseModel):
    """POST /translations: a createbytranslate body, and how to track every job it makes."""

    model_config = ConfigDict(extra="forbid")

    akool: Annotated[dict[str, Any], AfterValidator(_check_translate_body)] = Field(
        description="the createbytranslate body (url, language, …); the relay sets webhookUrl "
        "when RELAY_PUBLIC_URL is set"
    )
    callback_url: CallbackURL
    metadata: Metadata = Field(default_factory=dict)
    events: Events = Field(default_factory=lambda: list(DEFAULT_EVENTS), min_length=1)  # type: ignore[arg-type]


class TranslationFailure(BaseModel):
    """A language Akool made no job for (its all_results entry carried an error)."""

    language: str | None
    akool_code: int | None
    msg: str


class TranslationResult(BaseModel):
    akool: dict[str, Any]  # Akool's `data` and `all_results` (null for one language)
    jobs: list[JobPublic]
    failed: list[TranslationFailure]


def callback_body(job: Job, event: str, at: datetime) -> str:
    """The exact callback body, fixed when the change happens so every attempt sends the same bytes."""
    data = JobPublic.model_validate(job).model_dump(mode="json")
    data["upstream"] = job.upstream
    return json.dumps(
        {"type": f"job.{event}", "timestamp": at.isoformat().replace("+00:00", "Z"), "data": data},
        separators=(",", ":"),
    )
