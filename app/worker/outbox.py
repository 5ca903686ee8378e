"""The delivery loop: claim due events (earliest first per job), send each, record the attempt.

An event is the outbox row written with the state change; each attempt adds an attempt row
(SQL in store/events.py). New events need not wait for a claim: the poll transaction leases them
(`store.events.lease_new`, up to `free_slots()`) and `hand_over()` starts them once it commits, so a
callback goes out without a second turn of the write lock. Needed by: `make bench`'s callback latency
(p50 ≤ 20 ms): a claim after the commit left a 94 ms p50 gap between the state change and the send.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from app.config import Settings
from app.db import Database
from app.logs import delivery_fields
from app.metrics import Metrics
from app.models import EventState, utcnow
from app.retry import honour_retry_after, jittered, retry_delay
from app.store import events
from app.store.events import ClaimedEvent, Handoff
from app.webhooks import AttemptResult, WebhookSender
from app.worker.pump import Pump

log = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        sender: WebhookSender,
        metrics: Metrics,
        *,
        driven: bool = False,
    ) -> None:
        self.settings = settings
        self.db = db
        self.sender = sender
        self.metrics = metrics
        # A lease outlives the longest attempt, so an event is never sent twice at once.
        self.lease_seconds = max(settings.lease_seconds, settings.delivery_timeout * 2)
        self.pump: Pump[ClaimedEvent] = Pump(
            "outbox",
            self.claim,
            self.deliver,
            self.release,
            capacity=settings.poll_concurrency,
            driven=driven,
        )

    def free_slots(self) -> int:
        """How many new events a poll transaction may lease for `hand_over()`."""
        return self.pump.room

    def hand_over(self, handoff: Handoff) -> None:
        """After the poll transaction committed: send what it leased, claim what it left."""
        self.pump.adopt(handoff.events)
        if handoff.waiting:
            self.pump.wake()

    async def deliver_due(self) -> int:
        """Run-once entry (tests, burst runs): claim one batch of due events and send it."""
        return await self.pump.run_once()

    async def claim(self, n: int) -> list[ClaimedEvent]:
        # A quarter of the slots stays free of bulk redeliveries, for live callbacks (claim_due says why).
        keep_free = self.pump.capacity // 4
        return await events.claim_due(self.db, n, utcnow(), self.lease_seconds, keep_free=keep_free)

    async def release(self, items: list[ClaimedEvent]) -> None:
        await events.release(self.db, items)

    async def deliver(self, item: ClaimedEvent) -> None:
        result: AttemptResult | None = None
        try:
            result = await self.sender.send(item.tenant_id, item.callback_url, item.webhook_id, item.body)
        finally:
            # Always keep the attempt, even when the send was interrupted.
            await self._settle(item, result or AttemptResult(None, "interrupted", 0.0))

    async def _settle(self, item: ClaimedEvent, result: AttemptResult) -> None:
        """Decide what the attempt means for the event and write it."""
        now = utcnow()
        attempts = item.attempts + 1
        next_at: datetime | None
        if result.ok:
            state, next_at, outcome = EventState.DELIVERED, None, "delivered"
        elif result.gone:
            state, next_at, outcome = EventState.DEAD, None, "gone"
        else:
            delay = retry_delay(attempts, self.settings.retry_schedule)
            if delay is None:
                state, next_at, outcome = EventState.DEAD, None, "dead"
            else:
                delay = honour_retry_after(jittered(delay), result.retry_after)
                state, next_at, outcome = EventState.RETRYING, now + timedelta(seconds=delay), "failed"
        self.metrics.deliveries.labels(outcome).inc()
        fields = delivery_fields(item.webhook_id, item.video_model_id, str(item.tenant_id))
        answer = result.status_code if result.status_code is not None else result.error
        if result.ok and item.pushed_at is not None:
            self.metrics.push_callback_latency.observe((now - item.pushed_at).total_seconds())
        if state == EventState.DEAD:
            log.warning(
                "callback %s is dead after attempt %d (%s)", item.webhook_id, attempts, answer, extra=fields
            )
        else:
            log.info(
                "callback %s attempt %d: %s (%s)", item.webhook_id, attempts, outcome, answer, extra=fields
            )
        self.metrics.delivery_latency.observe(result.duration_ms / 1000)
        # Written at once, not group-committed: a result queued behind other writers could outlive
        # the event's lease, and another replica would send the callback again (seen on PostgreSQL).
        # Urgent: until it is written the outbox slot stays taken, and the next callback waits.
        kept = await self.db.run(
            lambda session: events.record_attempt(session, item, result, state, next_at, now), urgent=True
        )
        if not kept:
            log.warning("event %s: lease lost before the attempt was recorded", item.webhook_id, extra=fields)
        elif next_at is None:
            self.pump.wake()  # settled (delivered or dead): the job's next event may be waiting on it
