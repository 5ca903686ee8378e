"""The poll loop: claim due jobs, ask Akool, and turn each answer into a state change.

Where a poll result becomes a state change: `Poller._write()` → `states.decide()` →
`states.apply_decision()`; the job row, its transition rows and its outbox events are written there,
in one transaction (shared with the other polls that finished meanwhile: see worker/batch.py); new
events are leased in that transaction and handed straight to the outbox after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.akool import PAUSING, AkoolClient, AnswerKind, PollResult
from app.config import Settings
from app.db import Database
from app.logs import job_fields
from app.metrics import Metrics
from app.models import TERMINAL_STATUSES, Event, Job, JobStatus, utcnow
from app.scheduling import Turns
from app.states import Answered, Decision, Expired, JobView, NotFound, Observation, apply_decision, decide
from app.store import events, polls, subscriptions
from app.store.events import Handoff
from app.store.polls import ClaimedJob
from app.worker.batch import BatchWriter
from app.worker.budget import Budget
from app.worker.outbox import Outbox
from app.worker.pump import Pump
from app.worker.upstream import ANSWERED, HealthTracker

log = logging.getLogger(__name__)

# Seconds of request slots claimed jobs may wait for: a pushed job waits behind at most these.
CLAIM_HORIZON = 0.2


@dataclass(frozen=True)
class PollBatchWritten:
    """What a poll transaction did: the state changes it made, the events it leased."""

    changes: list[tuple[str, int, JobStatus, JobStatus]]  # video_model_id, tenant id, from, to
    handoff: Handoff


@dataclass(frozen=True)
class PollOutcome:
    """What one poll (or the clock) found out about a claimed job."""

    item: ClaimedJob
    observation: Observation | None
    result: PollResult | None


def _view(job: Job) -> JobView:
    return JobView(
        JobStatus(job.status), job.progress, tuple(job.events), job.not_found_count, job.not_found_since
    )


class Poller:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        akool: AkoolClient,
        metrics: Metrics,
        outbox: Outbox,
        budget: Budget,
        *,
        driven: bool = False,
    ) -> None:
        self.settings = settings
        self.db = db
        self.akool = akool
        self.metrics = metrics
        self.outbox = outbox
        self.limiter = budget  # the AkoolClient takes a slot before each request it sends
        self.health = HealthTracker(db)
        self.pump: Pump[ClaimedJob] = Pump(
            "poller", self.claim, self.poll, self.release, capacity=settings.poll_concurrency, driven=driven
        )
        self.writer: BatchWriter[PollOutcome, PollBatchWritten] = BatchWriter(
            db, self._write, then=self._committed
        )
        self._results: list[PollResult] = []  # since the last health write
        # The last claim found fewer due jobs than the budget let it take: polls ahead of an
        # estimate cost nothing scarce (app/scheduling.py, placement).
        self.spare = False
        self._next_wake: asyncio.TimerHandle | None = None  # a claim when the next job falls due
        self._probe_after = 0.0  # monotonic time of the next probe while paused
        self.turns = Turns()  # whose turn it is among tenants, kept from claim to claim

    async def tick(self) -> None:
        """The scheduler's entry: share what we learned, read what others learned, start due polls."""
        await self.sync_health()
        await self.pump.fill()

    async def poll_due_jobs(self) -> int:
        """Run-once entry: claim one batch of due jobs and finish it."""
        await self.sync_health()
        count = await self.pump.run_once()
        await self.sync_health()
        return count

    async def sync_health(self) -> None:
        results, self._results = self._results, []
        await self.health.record(results, throttled=self.limiter.throttled)
        await self.health.refresh()

    async def claim(self, n: int) -> list[ClaimedJob]:
        # Claim no more than the budget lets out in the next moment, counting the requests already
        # waiting for a slot: a job a push makes due must not queue in memory behind claimed ones.
        n = min(n, max(1, math.ceil(self.limiter.rate * CLAIM_HORIZON)) - self.limiter.waiting)
        if n <= 0:
            self.spare = False
            return []  # a finished poll wakes the pump, and the claim runs again then
        probe = False
        if self.health.paused and time.monotonic() >= self._probe_after:
            # Akool refuses our credentials: poll nothing but one probe per interval, to notice
            # when Akool accepts again (jobs still expire on time).
            self._probe_after = time.monotonic() + self.settings.poll_interval_min
            probe = True
        now = utcnow()
        claimed = await polls.claim_due(
            self.db,
            n,
            now,
            self.settings.lease_seconds,
            expiring_only=self.health.paused,
            probe=probe,
            turns=self.turns,
        )
        self.spare = len(claimed) < n
        if self.spare and not self.health.paused:
            await self._wake_when_next_due(now)
        return claimed

    async def _wake_when_next_due(self, now: datetime) -> None:
        """Nothing more is due: claim again when the next job falls due, not at the next tick (a poll
        placed at an estimate would otherwise wait up to RELAY_TICK_INTERVAL for it)."""
        if self.pump.driven:
            return
        due = await polls.next_due_at(self.db, now)
        if due is None:
            return
        delay = (due - now).total_seconds()
        if delay >= self.settings.tick_interval:
            return  # the tick comes first
        if self._next_wake is not None:
            self._next_wake.cancel()
        self._next_wake = asyncio.get_running_loop().call_later(max(0.0, delay), self.pump.wake)

    async def release(self, items: list[ClaimedJob]) -> None:
        await polls.release(self.db, items)

    async def poll(self, item: ClaimedJob) -> None:
        if item.expires_at <= utcnow():
            await self.apply(item, Expired(), None)
            return
        result = await self.akool.fetch(item.video_model_id)
        self._note(item, result)
        observation: Observation | None = None
        if result.kind == AnswerKind.OK and result.data is not None:
            observation = Answered(result.data)
        elif result.kind == AnswerKind.NOT_FOUND:
            observation = NotFound()
        await self.apply(item, observation, result)

    def _note(self, item: ClaimedJob, result: PollResult) -> None:
        """React to what the answer says about Akool as a whole, at once (not at the next tick)."""
        fields = job_fields(item.video_model_id, str(item.tenant_id))
        log.log(
            logging.DEBUG if result.kind in ANSWERED else logging.INFO,
            "poll of %s: %s%s",
            item.video_model_id,
            result.kind.value,
            f" ({result.detail})" if result.detail else "",
            extra=fields,
        )
        self._results.append(result)
        self.metrics.polls.labels(result.kind.value).inc()
        self.metrics.upstream_latency.observe(result.latency)
        if result.kind == AnswerKind.THROTTLED:
            self.limiter.slow_down()
        if result.kind in PAUSING and not self.health.paused:
            log.warning(
                "Akool refused our account (%s): polling paused until it accepts", result.detail, extra=fields
            )
            self.health.paused = True
            self._probe_after = time.monotonic() + self.settings.poll_interval_min
        elif result.kind in ANSWERED and self.health.paused:
            log.info("Akool accepts our requests again: polling resumed", extra=fields)
            self.health.paused = False

    async def apply(
        self, item: ClaimedJob, observation: Observation | None, result: PollResult | None
    ) -> None:
        """Write what one poll learned (committed together with other polls' results)."""
        await self.writer.submit(PollOutcome(item, observation, result))

    async def _write(self, session: AsyncSession, batch: list[PollOutcome]) -> PollBatchWritten:
        """One transaction: for each poll, its job row, transitions and outbox events.

        The new events that may go out at once are leased here too and handed to the outbox after
        the commit (see store.events.lease_new).
        """
        jobs, followers = await subscriptions.lock_for_poll(session, (outcome.item.id for outcome in batch))
        now = utcnow()
        created: list[tuple[Job, list[Event]]] = []
        changes: list[tuple[str, int, JobStatus, JobStatus]] = []

        def write(job: Job, observation: Observation | None, polled: bool, via: str, **kw: Any) -> None:
            decision = (
                decide(_view(job), observation, now, self.settings.not_found_grace)
                if observation is not None
                else Decision(status=JobStatus(job.status))
            )
            new_events = apply_decision(
                session, job, decision, now, self.settings, polled=polled, via=via, spare=self.spare, **kw
            )
            changes.extend(
                (job.video_model_id, job.tenant_id, old, new) for old, new, _ in decision.transitions
            )
            if new_events:
                created.append((job, new_events))

        for outcome in batch:
            job = jobs.get(outcome.item.id)
            if job is None or job.lease_token != outcome.item.token or job.status in TERMINAL_STATUSES:
                continue  # our lease was lost (or the client cancelled): someone else owns this row now
            # A push that came while this poll was in flight still wants a poll of its own.
            pushed = (
                job.push_due and job.push_due_at is not None and job.push_due_at <= outcome.item.claimed_at
            )
            clock = isinstance(outcome.observation, Expired)
            via = "clock" if clock else "push" if pushed else "poll"
            polled = outcome.result is not None
            pushed_at = job.last_pushed_at if pushed else None
            write(job, outcome.observation, polled, via, pushed_at=pushed_at)
            if pushed:
                job.push_due = False
            elif job.push_due and job.next_poll_at is not None:
                job.next_poll_at = job.claim_at = now
            others = [f for f in followers.get(job.video_model_id, ()) if f.id not in jobs]
            if polled:  # the same answer for every other tenant's subscription to the id
                for follower in others:
                    if follower.expires_at <= now:
                        write(follower, Expired(), False, "clock")
                    else:
                        write(follower, outcome.observation, True, via, pushed_at=pushed_at)
                    subscriptions.follow(follower, job)
            if job.leads and job.next_poll_at is None:  # it ended: the lead passes on
                subscriptions.hand_over(job, others, now)
        # Two subscriptions to one id that both lead (registered at one moment on two replicas) were
        # both claimed: the oldest keeps the lead.
        leading: dict[str, Job] = {}
        for job in jobs.values():  # in id order
            if job.leads and job.next_poll_at is not None:
                keeper = leading.setdefault(job.video_model_id, job)
                if keeper is not job:
                    subscriptions.follow(job, keeper)
        handoff = await events.lease_new(
            session, created, room=self.outbox.free_slots(), lease_seconds=self.outbox.lease_seconds
        )
        return PollBatchWritten(changes, handoff)

    def _committed(self, written: PollBatchWritten) -> None:
        # Counted and logged after the commit: a transaction PostgreSQL aborts runs again (Database.run).
        for video_model_id, tenant_id, old, new in written.changes:
            self.metrics.transitions.labels(new.value).inc()
            fields = job_fields(video_model_id, str(tenant_id))
            log.info("job %s: %s → %s", video_model_id, old.value, new.value, extra=fields)
        self.outbox.hand_over(written.handoff)
