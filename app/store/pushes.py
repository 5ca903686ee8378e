"""What a verified push from Akool may do to a job: count it, and perhaps make the job due now.

A push is a hint, never a fact (its signature has no secret, so anyone who saw one can replay it):
nothing about the job's state is written here, only `push_count`, `last_pushed_at` and whether the
next poll comes at once. The rules (SPEC §5) keep replays from spending the budget:
- a push saying the job ended makes it due at once, the first time;
- any other push (and a second ending one) at most once per RELAY_POLL_INTERVAL_MIN.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum

import sqlalchemy as sa
from sqlmodel import col

from app.db import Database
from app.models import TERMINAL_STATUSES, Job


class PushEffect(Enum):
    UNKNOWN = "unknown"  # no job with this id is tracked
    FINISHED = "finished"  # the job has ended: nothing changes
    COUNTED = "counted"  # counted; a push made it due too recently to do so again
    MADE_DUE = "made_due"  # counted, and the job is due now, ahead of the others


STRENGTH = [PushEffect.UNKNOWN, PushEffect.FINISHED, PushEffect.COUNTED, PushEffect.MADE_DUE]


async def note_push(
    db: Database, video_model_id: str, *, ending: bool, now: datetime, min_interval: float
) -> PushEffect:
    """Apply the push to every tenant's subscription to this id: each counts it, the one that leads
    may be made due (the others get its poll's answer). The effect is the strongest of theirs."""
    async with db.write(urgent=True) as session:  # Akool waits for our answer
        jobs = await session.scalars(
            sa.select(Job)
            .where(col(Job.video_model_id) == video_model_id)
            .order_by(col(Job.id))  # the lock order of every writer that locks several jobs
            .with_for_update()
        )
        effects = [_note(job, ending=ending, now=now, min_interval=min_interval) for job in jobs]
    return max(effects, key=STRENGTH.index, default=PushEffect.UNKNOWN)


def _note(job: Job, *, ending: bool, now: datetime, min_interval: float) -> PushEffect:
    if job.status in TERMINAL_STATUSES:
        return PushEffect.FINISHED
    job.push_count += 1
    job.last_pushed_at = now
    if not job.leads:
        return PushEffect.COUNTED  # its leader's poll is the one made due (store/subscriptions.py)
    if ending and not job.ending_push_seen:
        job.ending_push_seen = True
    elif job.push_due_at is not None and now - job.push_due_at < timedelta(seconds=min_interval):
        return PushEffect.COUNTED
    job.push_due, job.push_due_at = True, now
    if job.next_poll_at is None or job.next_poll_at > now:
        job.next_poll_at = now
    if job.claim_at is None or job.claim_at > now:
        job.claim_at = now  # ahead of its class too, should the pushed batch not take it
    return PushEffect.MADE_DUE
