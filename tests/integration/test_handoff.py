"""New events handed from the poll transaction straight to the outbox (Outbox.lease_new / hand_over):
order per job still holds (SPEC §4), nothing is lost when the outbox has no free slot, and a handed-over
event is recorded like a claimed one. Real simulator, receiver and databases, over loopback HTTP.

On real time, with the loops running: the hand-over is the subject, and a driven relay has none (its
outbox has no room for adoption, so every new event waits for a `deliver_due()` claim).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from itertools import groupby
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col

from app.db import Database
from app.models import Attempt, Event, EventState, Job
from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.simulator import Simulator
from app.store.events import Handoff
from tests.support.receivers import attempt_codes, scripted
from tests.support.relay import RelayFactory, RunningRelay, register, wait_job

STEPS = ["processing", "completed"]


def finished(job: dict[str, Any]) -> bool:
    return bool(job["status"] == "completed" and job["delivery"] == "delivered")


def record_handoffs(r: RunningRelay, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Webhook ids the poller hands straight to the outbox, in order; the real hand_over still runs."""
    outbox = r.relay.outbox
    hand_over = outbox.hand_over
    handed: list[str] = []

    def recording(handoff: Handoff) -> None:
        handed.extend(item.webhook_id for item in handoff.events)
        hand_over(handoff)

    monkeypatch.setattr(outbox, "hand_over", recording)
    return handed


async def test_a_later_state_waits_while_the_earlier_callback_is_retried(
    start_relay: RelayFactory,
    simulator: tuple[Simulator, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, _ = simulator
    # The first poll sees processing; completed follows ~0.3 s later, while the processing callback is
    # still failing (two 503s, a second apart): the completed event is written behind an unsettled one.
    sim.script("vid-handoff-1", queue_seconds=0, process_seconds=0.3)
    tries: Counter[str] = Counter()

    def answer(path: str, event_type: str) -> tuple[int, dict[str, str]]:
        tries[event_type] += 1
        return (503 if event_type == "job.processing" and tries[event_type] <= 2 else 200), {}

    async with scripted(answer) as (rec, base_url), start_relay(RELAY_RETRY_SCHEDULE="1,1,1") as r:
        handed = record_handoffs(r, monkeypatch)
        await register(r, "vid-handoff-1", f"{base_url}/hook", events=STEPS)
        job = await wait_job(r.client, "vid-handoff-1", finished, timeout=30)

    # In order, each exactly once: nothing of the completed event went out before processing was accepted.
    assert [(h.type, h.status) for h in rec.hits] == [
        ("job.processing", 503),
        ("job.processing", 503),
        ("job.processing", 200),
        ("job.completed", 200),
    ]
    processing, completed = job["deliveries"]
    assert [processing["type"], completed["type"]] == ["job.processing", "job.completed"]
    assert [h.webhook_id for h in rec.hits] == [processing["webhook_id"]] * 3 + [completed["webhook_id"]]
    assert attempt_codes(job, 0) == [503, 503, 200] and attempt_codes(job, 1) == [200]
    assert processing["state"] == completed["state"] == "delivered"
    # The case under test happened: completed was written while processing was unsettled ...
    assert datetime.fromisoformat(completed["created_at"]) < datetime.fromisoformat(
        processing["delivered_at"]
    )
    # ... so the poll that wrote it did not hand it over; only the first event (no earlier one) was.
    assert handed == [processing["webhook_id"]]


async def test_no_free_outbox_slot_loses_no_event(
    db_url: str,
    start_relay: RelayFactory,
    simulator: tuple[Simulator, str],
    receiver: tuple[Receiver, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    rec.behaviour = Behaviour(delay=0.15)  # slow: the only slot is busy most of the time
    vids = [f"vid-noroom-{i}" for i in range(6)]
    for vid in vids:
        sim.script(vid, queue_seconds=0, process_seconds=0.2)
    # Long leases: an event leased by a poll but never started would not come back within the test.
    async with start_relay(RELAY_POLL_CONCURRENCY=1, RELAY_LEASE_SECONDS=60) as r:
        handed = record_handoffs(r, monkeypatch)
        for vid in vids:
            await register(r, vid, hook_url, events=STEPS)
        await rec.wait_for(lambda x: len(x.unique()) == 2 * len(vids), timeout=45)
        jobs = [await wait_job(r.client, vid, finished, timeout=30) for vid in vids]
        for vid in vids:
            assert_settled_once(*await stored(db_url, vid))

    assert rec.duplicates() == 0 and len(rec.attempts) == 2 * len(vids)
    by_job = rec.by_job()
    for vid, job in zip(vids, jobs, strict=True):
        accepted = by_job[vid]
        assert [a.type for a in accepted] == ["job.processing", "job.completed"], vid
        assert [d["webhook_id"] for d in job["deliveries"]] == [a.webhook_id for a in accepted]
        assert all(attempt_codes(job, i) == [200] for i in range(2)), job["deliveries"]
        # Unbroken runs per webhook-id, in the accepted order: completed never overtook processing.
        runs = [
            wid
            for wid, _ in groupby(
                a.webhook_id for a in rec.attempts if a.body["data"]["video_model_id"] == vid
            )
        ]
        assert runs == [a.webhook_id for a in accepted], vid
    # Both paths carried events (recorded alike, above). A processing event is its job's first, so only
    # a full outbox keeps it from being handed over: some were, the rest went by claim.
    first = {job["deliveries"][0]["webhook_id"] for job in jobs}
    assert len(handed) == len(set(handed)), handed
    assert first & set(handed), "no event was handed over"
    assert first - set(handed), "every first event was handed over: the no-free-slot path never ran"


async def test_a_handed_over_event_is_settled_like_a_claimed_one(
    db_url: str,
    start_relay: RelayFactory,
    simulator: tuple[Simulator, str],
    receiver: tuple[Receiver, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    sim.script("vid-settle-1", queue_seconds=0, process_seconds=0.5)
    # Long leases: a handed-over event whose attempt was not recorded would stay leased, not come back.
    async with start_relay(RELAY_LEASE_SECONDS=60) as r:
        handed = record_handoffs(r, monkeypatch)
        await register(r, "vid-settle-1", hook_url, events=STEPS)
        job = await wait_job(r.client, "vid-settle-1", finished, timeout=30)
        events, attempts, delivery = await stored(db_url, "vid-settle-1")

    assert [e.type for e in events] == ["job.processing", "job.completed"]
    # The first event had nothing before it and a free slot: it was handed over, not claimed.
    assert handed and handed[0] == events[0].webhook_id
    assert set(handed) <= {e.webhook_id for e in events}
    assert_settled_once(events, attempts, delivery)
    # Sent once each, and the API shows the same record.
    assert sorted(a.webhook_id for a in rec.attempts) == sorted(e.webhook_id for e in events)
    assert [(d["webhook_id"], d["state"]) for d in job["deliveries"]] == [
        (e.webhook_id, "delivered") for e in events
    ]
    assert all(attempt_codes(job, i) == [200] for i in range(len(events)))


def assert_settled_once(
    events: list[Event], attempts: dict[int | None, list[Attempt]], delivery: str
) -> None:
    """Every event row delivered at its first attempt: settled, lease cleared, one attempt row."""
    for event in events:
        assert event.state == EventState.DELIVERED, event
        assert event.next_attempt_at is None and event.delivered_at is not None, event
        assert event.locked_until is None and event.lease_token is None, event
        assert event.attempts == 1, event
        [attempt] = attempts[event.id]
        assert attempt.status_code == 200 and attempt.error is None, attempt
        assert attempt.at == event.delivered_at
    assert delivery == EventState.DELIVERED


async def stored(
    db_url: str, video_model_id: str
) -> tuple[list[Event], dict[int | None, list[Attempt]], str]:
    """The job's event rows, their attempt rows and job.delivery, read through the project's Database."""
    db = Database(db_url)
    try:
        async with db.read() as session:
            job = (
                await session.execute(sa.select(Job).where(col(Job.video_model_id) == video_model_id))
            ).scalar_one()
            events = list(
                (
                    await session.execute(
                        sa.select(Event).where(col(Event.job_id) == job.id).order_by(col(Event.id))
                    )
                ).scalars()
            )
            rows = await session.execute(
                sa.select(Attempt)
                .where(col(Attempt.event_id).in_([e.id for e in events]))
                .order_by(col(Attempt.id))
            )
            attempts: dict[int | None, list[Attempt]] = {e.id: [] for e in events}
            for attempt in rows.scalars():
                attempts[attempt.event_id].append(attempt)
            return events, attempts, job.delivery
    finally:
        await db.dispose()
