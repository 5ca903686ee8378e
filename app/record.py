"""Writes a state-machine `Decision` to the database: job row, transition rows, outbox events.

The caller owns the transaction, so the three always land together (or not at all). Both the poller
and the API (cancel) come through here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.models import Event, EventState, Job, Transition
from app.schemas import callback_body
from app.states import Decision
from app.store.leases import new_token
from app.retry import jittered, next_poll_interval


def new_webhook_id() -> str:
    return "msg_" + new_token()


def write_decision(
    session: AsyncSession, job: Job, decision: Decision, now: datetime, settings: Settings, *, polled: bool
) -> list[Event]:
    """Apply `decision` to `job` (loaded in `session`); returns the new outbox events, oldest first."""
    assert job.id is not None, "the job row is loaded from the database"
    for key, value in decision.fields.items():
        setattr(job, key, value)
    if polled:
        job.last_polled_at = now
        job.poll_count += 1
    if decision.changed:
        job.updated_at = now
    for from_status, to_status, progress in decision.transitions:
        session.add(
            Transition(job_id=job.id, from_status=from_status, to_status=to_status, at=now, progress=progress)
        )
    if decision.terminal:
        job.finished_at = now
        job.next_poll_at = None
    else:
        job.poll_interval = next_poll_interval(
            job.poll_interval,
            changed=decision.changed,
            minimum=settings.poll_interval_min,
            maximum=settings.poll_interval_max,
        )
        # Never later than the deadline, so a job expires on time.
        job.next_poll_at = min(now + timedelta(seconds=jittered(job.poll_interval)), job.expires_at)
    job.locked_until = None
    job.lease_token = None
    events = [
        Event(
            webhook_id=new_webhook_id(),
            job_id=job.id,
            type=f"job.{name}",
            body=callback_body(job, name, now),
            created_at=now,
            next_attempt_at=now,
        )
        for name in decision.events
    ]
    if events:
        job.delivery = EventState.PENDING
        session.add_all(events)
    return events
