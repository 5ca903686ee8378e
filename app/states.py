"""The job state machine, and the code that writes its decisions.

`decide()` is one pure function from (job, what we learned) to what changes: it never touches the
database or the clock. `apply_decision()` writes a `Decision` onto the job's row in the caller's
transaction, with its transition rows and outbox events, so the three land together or not at all.
The poller (`worker/poller.py`) and the API's cancel (`store/jobs.py`) are its two callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app import scheduling
from app.config import Settings
from app.models import TERMINAL_STATUSES, Event, EventState, Job, JobStatus, Transition
from app.schemas import callback_body
from app.store.leases import new_token

# Which status may follow which. Anything else is ignored: Akool does not move jobs backwards,
# and a terminal job never changes again.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset(
        {
            JobStatus.QUEUEING,
            JobStatus.PROCESSING,
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.EXPIRED,
            JobStatus.CANCELLED,
        }
    ),
    JobStatus.QUEUEING: frozenset(
        {JobStatus.PROCESSING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED}
    ),
    JobStatus.PROCESSING: frozenset(
        {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED}
    ),
    **{terminal: frozenset() for terminal in TERMINAL_STATUSES},
}

VIDEO_STATUS = {1: JobStatus.QUEUEING, 2: JobStatus.PROCESSING, 3: JobStatus.COMPLETED, 4: JobStatus.FAILED}

NOT_FOUND_ANSWERS = 3  # "does not exist" answers in a row needed (over the grace) to fail a job


@dataclass(frozen=True)
class JobView:
    """What the state machine needs to know about a job."""

    status: JobStatus
    progress: int | None
    events: tuple[str, ...]
    not_found_count: int = 0
    not_found_since: datetime | None = None


# What a poll (or the clock, or the client) tells us.
@dataclass(frozen=True)
class Answered:
    """Akool answered code 1000 with this `data`."""

    data: dict[str, Any]


@dataclass(frozen=True)
class NotFound:
    """Akool answered that the id does not exist (1008 / 1014)."""


@dataclass(frozen=True)
class Expired:
    """RELAY_JOB_TIMEOUT passed."""


@dataclass(frozen=True)
class Cancelled:
    """The client deleted the job."""


Observation = Answered | NotFound | Expired | Cancelled


@dataclass
class Decision:
    status: JobStatus
    fields: dict[str, Any] = field(default_factory=dict)  # job columns to set
    transitions: list[tuple[JobStatus, JobStatus, int | None]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # event names, e.g. "completed"
    changed: bool = False  # anything a client would notice (a status change resets the poll interval)
    answered: bool = False  # Akool answered with a status we know (the poll may place the next one)
    seen_progress: int | None = None  # the progress that answer reported (a prediction sample)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _move(job: JobView, decision: Decision, to: JobStatus, progress: int | None) -> None:
    if to == decision.status or to not in ALLOWED[decision.status]:
        return
    decision.transitions.append((decision.status, to, progress))
    decision.status = to
    decision.fields["status"] = to.value
    decision.changed = True
    if to.value in job.events:
        decision.events.append(to.value)


def decide(job: JobView, observation: Observation, now: datetime, not_found_grace: float) -> Decision:
    decision = Decision(status=job.status)
    if job.status in TERMINAL_STATUSES:
        return decision
    match observation:
        case Cancelled():
            _move(job, decision, JobStatus.CANCELLED, job.progress)
        case Expired():
            _move(job, decision, JobStatus.EXPIRED, job.progress)
        case NotFound():
            count = job.not_found_count + 1
            since = job.not_found_since or now
            decision.fields.update(not_found_count=count, not_found_since=since)
            if count >= NOT_FOUND_ANSWERS and now - since >= timedelta(seconds=not_found_grace):
                decision.fields.update(
                    error_reason="Akool kept answering that this video_model_id does not exist"
                )
                _move(job, decision, JobStatus.FAILED, job.progress)
        case Answered(data=data):
            _apply_seen(job, decision, data)
    return decision


def _apply_seen(job: JobView, decision: Decision, data: dict[str, Any]) -> None:
    fields = decision.fields
    fields.update(upstream=data, not_found_count=0, not_found_since=None)
    target = VIDEO_STATUS.get(_int_or_none(data.get("video_status")) or 0)
    progress = _int_or_none(data.get("progress"))
    if progress is not None:
        progress = max(0, min(100, progress))
    if target is None:  # an answer without a status we know: keep what we have, learn nothing
        return
    if target != job.status and target not in ALLOWED[job.status]:
        return  # a stale answer (e.g. queueing after processing): never move backwards
    decision.answered = True
    decision.seen_progress = progress
    if target == JobStatus.COMPLETED:
        fields["video_url"] = data.get("video") or None
        fields["audio_splits"] = (
            data.get("audio_splits") if isinstance(data.get("audio_splits"), dict) else None
        )
        progress = 100 if progress is None else progress
    if target == JobStatus.FAILED:
        fields["error_code"] = _int_or_none(data.get("error_code"))
        fields["error_reason"] = data.get("error_reason") or None
    was_processing = job.status == JobStatus.PROCESSING
    if progress is not None and progress != job.progress:
        fields["progress"] = progress
        decision.changed = True
        if was_processing and target == JobStatus.PROCESSING and "progress" in job.events:
            decision.events.append("progress")
    fields["video_status"] = _int_or_none(data.get("video_status"))
    _move(job, decision, target, progress if progress is not None else job.progress)


def _schedule(
    job: Job,
    decision: Decision,
    now: datetime,
    settings: Settings,
    *,
    pushed: bool,
    previous_poll: datetime | None,
    spare: bool,
) -> None:
    """Sample the progress, estimate the finish, place the next poll and give it its priority
    (app/scheduling.py). `previous_poll`: when the job was polled before this poll; `spare`: the
    budget has room for polls ahead of the estimate."""
    status = decision.status
    if status != JobStatus.PROCESSING:
        job.progress_samples = job.expected_finish_at = None
    elif decision.answered:
        samples = job.progress_samples
        if decision.transitions:  # processing starts now: afresh, from the anchor at its start
            before = None if previous_poll is None else previous_poll.timestamp()
            samples = scheduling.start_of_processing(before, now.timestamp())
        if decision.seen_progress is not None:
            samples = scheduling.add_sample(samples, now.timestamp(), decision.seen_progress)
        job.progress_samples = samples
        finish = scheduling.predict_finish(samples)
        job.expected_finish_at = None if finish is None else datetime.fromtimestamp(finish, UTC)
    # An unanswered poll (a transient error) backs off: an estimate is no reason to retry sooner.
    expected = job.expected_finish_at if decision.answered else None
    samples = job.progress_samples
    plan = scheduling.plan_next_poll(
        now.timestamp(),
        None if expected is None else expected.timestamp(),
        job.poll_interval,
        # A status change without an estimate (processing has just started and progress says nothing
        # yet), or a poll a push asked for that found the job unfinished: the next one at the
        # minimum. A progress change alone is what the estimate is made of.
        reset=(bool(decision.transitions) and expected is None) or pushed,
        minimum=settings.poll_interval_min,
        maximum=settings.poll_interval_max,
        spare=spare,
        estimated_from=float(samples[0][0]) if samples else None,
    )
    job.poll_interval = plan.interval
    # Within [MIN, MAX] of this poll, jitter included (SPEC §5), and never later than the deadline,
    # so a job expires on time.
    job.next_poll_at = min(now + timedelta(seconds=plan.wait), job.expires_at)
    klass = scheduling.poll_class(
        status, job.next_poll_at, job.expected_finish_at, settings.poll_interval_min
    )
    job.poll_class = int(klass)
    job.claim_at = scheduling.claim_at(job.next_poll_at, klass, settings.poll_interval_max)


def new_webhook_id() -> str:
    return "msg_" + new_token()


def apply_decision(
    session: AsyncSession,
    job: Job,
    decision: Decision,
    now: datetime,
    settings: Settings,
    *,
    polled: bool,
    via: str,
    pushed_at: datetime | None = None,
    spare: bool = False,
) -> list[Event]:
    """Apply `decision` to `job` (loaded in `session`); returns the new outbox events, oldest first.

    `via`: what taught us (poll, push, clock, client), kept on each transition; `pushed_at`: the push
    a poll was made for (its events remember it, for the push → callback latency); `spare`: the
    budget has room (the next poll may look ahead of the estimate)."""
    assert job.id is not None, "the job row is loaded from the database"
    previous_poll = job.last_polled_at
    for key, value in decision.fields.items():
        setattr(job, key, value)
    if polled:
        job.last_polled_at = now
        job.poll_count += 1
    if decision.changed:
        job.updated_at = now
    for from_status, to_status, progress in decision.transitions:
        session.add(
            Transition(
                job_id=job.id,
                from_status=from_status,
                to_status=to_status,
                at=now,
                progress=progress,
                via=via,
            )
        )
    if decision.terminal:
        job.finished_at = now
        job.next_poll_at = job.claim_at = None
        job.push_due = False
        job.progress_samples = job.expected_finish_at = None
    else:
        _schedule(
            job, decision, now, settings, pushed=via == "push", previous_poll=previous_poll, spare=spare
        )
    job.locked_until = None
    job.lease_token = None
    events = [
        Event(
            webhook_id=new_webhook_id(),
            job_id=job.id,
            tenant_id=job.tenant_id,
            type=f"job.{name}",
            body=callback_body(job, name, now),
            created_at=now,
            next_attempt_at=now,
            pushed_at=pushed_at,
        )
        for name in decision.events
    ]
    if events:
        job.delivery = EventState.PENDING
        session.add_all(events)
    return events
