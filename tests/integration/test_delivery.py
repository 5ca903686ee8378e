"""Callback delivery (SPEC §4) over real HTTP on loopback: retries, 410, dead and redeliver, order per
job, redirects, Retry-After, timeouts, what every callback carries, and an outbox that survives a restart.

Most tests drive the relay's loops one step at a time (`driven=True`): `poll()` and `deliver()` below run
`poll_due_jobs()` / `deliver_due()` once, and the simulated jobs move on `sim_clock`. Polls and retries
are planned 1 ms ahead (RETRIES_AT_ONCE), so whatever a step left to do again is due at the next one.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import Counter
from datetime import datetime
from itertools import groupby
from typing import Any

from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.simulator import FAILED_ERROR_CODE, FAILED_REASON, ManualClock, Simulator
from tests.support.receivers import attempt_codes, scripted
from tests.support.relay import (
    DUE_AT_ONCE,
    PAST_THE_END,
    RelayFactory,
    RunningRelay,
    deliver,
    detail,
    drain,
    poll,
    register,
    wait_job,
)

# Polls and retries planned 1 ms ahead: what a step leaves to do again is due at the next step.
RETRIES_AT_ONCE: dict[str, Any] = {**DUE_AT_ONCE, "RELAY_RETRY_SCHEDULE": "0.001,0.001,0.001"}


async def finish(r: RunningRelay, clock: ManualClock) -> None:
    """Poll the one job registered just now to its end: queueing, then (past its end) completed or failed."""
    assert await poll(r) == 1
    clock.advance(PAST_THE_END)
    assert await poll(r) == 1


# -- outcomes ------------------------------------------------------------------------------------


async def test_failed_job_is_called_back_with_the_error(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    async with start_relay(driven=True, **RETRIES_AT_ONCE) as r:
        await register(r, "fail-delivery-1", hook_url)
        await finish(r, sim_clock)
        assert await deliver(r) == 1
        job = await detail(r, "fail-delivery-1")
    assert job["delivery"] == "delivered"
    assert job["status"] == "failed"
    [callback] = rec.accepted
    assert callback.verified
    assert callback.type == "job.failed"
    data = callback.body["data"]
    assert data["video_model_id"] == "fail-delivery-1"
    assert data["status"] == "failed"
    assert data["error_code"] == FAILED_ERROR_CODE
    assert data["error_reason"] == FAILED_REASON
    assert data["upstream"]["video_status"] == 4
    assert job["error_code"] == FAILED_ERROR_CODE and job["error_reason"] == FAILED_REASON
    assert [d["type"] for d in job["deliveries"]] == ["job.failed"]


# -- retries -------------------------------------------------------------------------------------


async def test_retries_until_accepted_with_the_same_webhook_id(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    rec.behaviour = Behaviour(fail_first=3, fail_status=500)
    async with start_relay(driven=True, **RETRIES_AT_ONCE) as r:
        await register(r, "vid-retry-1", hook_url)
        await finish(r, sim_clock)
        for attempt in range(1, 4):
            assert await deliver(r) == 1
            job = await detail(r, "vid-retry-1")
            assert job["delivery"] == "retrying" and len(rec.attempts) == attempt, job
        assert await drain(r) == 1
        job = await detail(r, "vid-retry-1")
    assert len(rec.accepted) == 1
    assert len(rec.attempts) == 4
    assert {a.webhook_id for a in rec.attempts} == {rec.accepted[0].webhook_id}
    # Every attempt sends the same bytes (fixed when the change happened), freshly signed.
    assert all(a.body == rec.accepted[0].body for a in rec.attempts)
    assert all(a.verified for a in rec.attempts)
    [delivery] = job["deliveries"]
    assert delivery["webhook_id"] == rec.accepted[0].webhook_id
    assert delivery["state"] == "delivered"
    assert delivery["delivered_at"] is not None and delivery["next_attempt_at"] is None
    assert attempt_codes(job) == [500, 500, 500, 200]
    assert [a["error"] for a in delivery["attempts"]][:3] == ["HTTP 500"] * 3
    assert job["delivery"] == "delivered"


async def test_410_gone_stops_at_once(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    rec.behaviour = Behaviour(status=410)
    async with start_relay(driven=True, **RETRIES_AT_ONCE) as r:
        await register(r, "vid-gone-1", hook_url)
        await finish(r, sim_clock)
        assert await deliver(r) == 1
        job = await detail(r, "vid-gone-1")
        assert job["delivery"] == "dead"
        [delivery] = job["deliveries"]
        assert delivery["state"] == "dead"
        assert delivery["next_attempt_at"] is None
        assert attempt_codes(job) == [410]
        # Well past the whole schedule (3 ms plus jitter), step after step: nothing more goes out.
        assert await drain(r) == 0
        assert [await deliver(r) for _ in range(3)] == [0, 0, 0]
        again = await detail(r, "vid-gone-1")
    assert len(rec.attempts) == 1
    assert rec.accepted == []
    assert attempt_codes(again) == [410]
    assert again["delivery"] == "dead"


async def test_dead_after_the_schedule_then_redeliver(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    rec.behaviour = Behaviour(status=500)
    async with start_relay(driven=True, **{**RETRIES_AT_ONCE, "RELAY_RETRY_SCHEDULE": "0.001,0.001"}) as r:
        await register(r, "vid-dead-1", hook_url)
        await finish(r, sim_clock)
        assert await drain(r) == 3  # the first attempt and the two retries of the schedule
        job = await detail(r, "vid-dead-1")
        assert job["delivery"] == "dead"
        assert attempt_codes(job) == [500, 500, 500]
        assert job["deliveries"][0]["state"] == "dead"
        assert len(rec.attempts) == 3 and rec.accepted == []
        webhook_id = rec.attempts[0].webhook_id
        assert {a.webhook_id for a in rec.attempts} == {webhook_id}

        listing = (await r.client.get("/jobs")).json()
        assert listing["summary"]["deliveries"].get("dead") == 1

        rec.behaviour = Behaviour(status=200)
        redelivered = await r.client.post("/jobs/vid-dead-1/redeliver")
        assert redelivered.status_code == 202, redelivered.text
        assert redelivered.json()["webhook_id"] == webhook_id
        assert redelivered.json()["type"] == "job.completed"
        assert await drain(r) == 1
        job = await detail(r, "vid-dead-1")
        assert job["delivery"] == "delivered"
    [callback] = rec.accepted
    assert callback.webhook_id == webhook_id
    assert callback.body == rec.attempts[0].body
    assert len(rec.attempts) == 4
    assert attempt_codes(job) == [500, 500, 500, 200]
    assert job["deliveries"][0]["state"] == "delivered"


# -- order per job -------------------------------------------------------------------------------

EVERY_STEP = ["queueing", "processing", "progress", "completed"]
ORDER = re.compile(r"q p (g )*c")
UPSTREAM_STATUS = {"job.queueing": 1, "job.processing": 2, "job.progress": 2, "job.completed": 3}


def shape(types: list[str]) -> str:
    letters = {"job.queueing": "q", "job.processing": "p", "job.progress": "g", "job.completed": "c"}
    return "".join(letters.get(t, "?") + " " for t in types).rstrip()


def check_order(rec: Receiver, video_model_id: str, metadata: dict[str, Any]) -> None:
    accepted = rec.accepted
    assert ORDER.fullmatch(shape([a.type for a in accepted])), [a.type for a in accepted]
    assert rec.duplicates() == 0
    stamps = [datetime.fromisoformat(a.body["timestamp"]) for a in accepted]
    assert stamps == sorted(stamps)
    progress = [a.body["data"]["progress"] for a in accepted]
    assert progress == sorted(progress)
    for a in accepted:
        data = a.body["data"]
        assert a.verified
        assert data["video_model_id"] == video_model_id
        assert data["metadata"] == metadata
        assert data["upstream"]["video_status"] == UPSTREAM_STATUS[a.type]
        assert data["status"] == a.type.removeprefix("job.").replace("progress", "processing")
        # Unix seconds of this attempt, taken just before sending.
        assert abs(int(a.headers["webhook-timestamp"]) - a.at) < 5
    # No attempt of a later event went out before the earlier one was accepted: the receiver saw
    # each webhook-id's attempts as one unbroken run, in the order of the accepted callbacks.
    runs = [wid for wid, _ in groupby(a.webhook_id for a in rec.attempts)]
    assert runs == [a.webhook_id for a in accepted]


# Simulated seconds between polls, for a job queueing 0.3 s then processing 0.5 s: the first poll sees
# queueing, the next processing at 10 %, two more see progress (40 %, 70 %), the last completed.
LIFECYCLE = [0.35, 0.15, 0.15, PAST_THE_END]


async def test_events_arrive_in_order_with_metadata_and_upstream(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    sim, _ = stepped_simulator
    rec, hook_url = receiver
    sim.script("vid-order-1", queue_seconds=0.3, process_seconds=0.5)
    metadata = {"order": 42, "nested": {"tags": ["a", "b"], "ok": True}}
    async with start_relay(driven=True, **RETRIES_AT_ONCE) as r:
        await register(r, "vid-order-1", hook_url, events=EVERY_STEP, metadata=metadata)
        # Each state's callback goes out before the next poll.
        assert await poll(r) == 1 and await deliver(r) == 1
        for seconds in LIFECYCLE:
            sim_clock.advance(seconds)
            assert await poll(r) == 1 and await deliver(r) == 1
        assert await poll(r) == 0 and await deliver(r) == 0
        job = await detail(r, "vid-order-1")
    assert job["status"] == "completed" and job["delivery"] == "delivered"
    assert shape([a.type for a in rec.accepted]) == "q p g g c"
    check_order(rec, "vid-order-1", metadata)
    assert len(rec.attempts) == len(rec.accepted)
    assert [d["webhook_id"] for d in job["deliveries"]] == [a.webhook_id for a in rec.accepted]
    assert all(d["state"] == "delivered" for d in job["deliveries"])


async def test_a_later_event_waits_for_an_earlier_one_being_retried(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    sim, _ = stepped_simulator
    rec, hook_url = receiver
    rec.behaviour = Behaviour(fail_first=2, fail_status=503)
    sim.script("vid-order-2", queue_seconds=0.3, process_seconds=0.5)
    async with start_relay(driven=True, **RETRIES_AT_ONCE) as r:
        await register(r, "vid-order-2", hook_url, events=EVERY_STEP, metadata={"k": 1})
        assert await poll(r) == 1 and await deliver(r) == 1  # queueing: 503
        # Processing is written behind the unsettled queueing event: the next delivery step retries
        # queueing, and sends nothing of processing.
        sim_clock.advance(LIFECYCLE[0])
        assert await poll(r) == 1 and await deliver(r) == 1
        assert [a.type for a in rec.attempts] == ["job.queueing"] * 2
        # The job runs to its end before anything more is delivered: five events wait in the outbox.
        for seconds in LIFECYCLE[1:]:
            sim_clock.advance(seconds)
            assert await poll(r) == 1
        job = await detail(r, "vid-order-2")
        assert job["status"] == "completed" and len(job["deliveries"]) == 5, job
        assert await drain(r) == 3 * 5 - 2  # each event two 503s and a 200, one event at a time
        job = await detail(r, "vid-order-2")
    assert job["status"] == "completed" and job["delivery"] == "delivered"
    check_order(rec, "vid-order-2", {"k": 1})
    # Each event: two 503s then the 200.
    assert set(Counter(a.webhook_id for a in rec.attempts).values()) == {3}
    assert all(attempt_codes(job, i) == [503, 503, 200] for i in range(len(job["deliveries"])))
    assert [d["webhook_id"] for d in job["deliveries"]] == [a.webhook_id for a in rec.accepted]


async def test_a_dead_event_no_longer_blocks_later_ones(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    def answer(path: str, event_type: str) -> tuple[int, dict[str, str]]:
        return (500 if event_type == "job.queueing" else 200), {}

    async with (
        scripted(answer) as (rec, base_url),
        start_relay(driven=True, **{**RETRIES_AT_ONCE, "RELAY_RETRY_SCHEDULE": "0.001,0.001"}) as r,
    ):
        await register(r, "vid-unblock-1", f"{base_url}/hook", events=["queueing", "completed"])
        assert await poll(r) == 1 and await deliver(r) == 1  # queueing: 500, retrying
        # Completed is written while queueing is still being retried.
        sim_clock.advance(PAST_THE_END)
        assert await poll(r) == 1
        assert await deliver(r) == 1 and await deliver(r) == 1  # queueing again, twice: dead
        assert [h.type for h in rec.hits] == ["job.queueing"] * 3
        assert await drain(r) == 1  # now completed goes
        job = await detail(r, "vid-unblock-1")
    assert job["status"] == "completed" and job["delivery"] == "delivered"
    queueing, completed = job["deliveries"]
    assert queueing["type"] == "job.queueing" and queueing["state"] == "dead"
    assert [a["status_code"] for a in queueing["attempts"]] == [500, 500, 500]
    assert completed["type"] == "job.completed" and completed["state"] == "delivered"
    assert [a["status_code"] for a in completed["attempts"]] == [200]
    assert [h.type for h in rec.hits] == ["job.queueing"] * 3 + ["job.completed"]
    # The completed event existed before the queueing one died, and waited for it.
    died = datetime.fromisoformat(queueing["attempts"][-1]["at"])
    assert datetime.fromisoformat(completed["created_at"]) < died
    assert datetime.fromisoformat(completed["attempts"][0]["at"]) >= died


# -- what counts as an answer --------------------------------------------------------------------


async def test_redirects_are_failures_and_not_followed(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    locations: list[str] = []

    def answer(path: str, event_type: str) -> tuple[int, dict[str, str]]:
        if path == "hook":
            return 302, {"location": locations[0]}
        return 200, {}

    async with (
        scripted(answer) as (rec, base_url),
        start_relay(driven=True, **{**RETRIES_AT_ONCE, "RELAY_RETRY_SCHEDULE": "0.001,0.001"}) as r,
    ):
        locations.append(f"{base_url}/target")
        await register(r, "vid-redirect-1", f"{base_url}/hook")
        await finish(r, sim_clock)
        assert await drain(r) == 3
        job = await detail(r, "vid-redirect-1")
    assert job["delivery"] == "dead"
    assert [h.path for h in rec.hits] == ["hook"] * 3  # the target never got it
    assert attempt_codes(job) == [302, 302, 302]
    assert all(a["error"] == "HTTP 302" for a in job["deliveries"][0]["attempts"])


async def test_retry_after_asking_for_longer_is_honoured(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    rec.behaviour = Behaviour(fail_first=1, fail_status=503, retry_after="2")
    async with start_relay(driven=True, **{**RETRIES_AT_ONCE, "RELAY_RETRY_SCHEDULE": "0.001"}) as r:
        await register(r, "vid-retry-after-1", hook_url)
        await finish(r, sim_clock)
        assert await deliver(r) == 1  # 503, Retry-After: 2
        # The schedule's 1 ms has passed; the receiver asked for 2 s, and gets them.
        assert await deliver(r) == 0
        [delivery] = (await detail(r, "vid-retry-after-1"))["deliveries"]
        [failed] = delivery["attempts"]
        planned = datetime.fromisoformat(delivery["next_attempt_at"]) - datetime.fromisoformat(failed["at"])
        assert 2 <= planned.total_seconds() < 2.1, planned
        # The relay's clock is the wall clock: wait until the retry is due, then step.
        due = datetime.fromisoformat(delivery["next_attempt_at"]).timestamp()
        await asyncio.sleep(max(0.0, due - time.time()))
        assert await deliver(r) == 1
        job = await detail(r, "vid-retry-after-1")
    assert job["delivery"] == "delivered"
    first, second = rec.attempts
    assert first.webhook_id == second.webhook_id
    gap = second.at - first.at
    assert 1.9 <= gap < 3.5, gap
    assert attempt_codes(job) == [503, 200]


async def test_a_slow_receiver_times_out(start_relay: RelayFactory, receiver: tuple[Receiver, str]) -> None:
    # On real time, with the loops running: the subject is the wall-clock timeout of a send the
    # background outbox started, and a retry it schedules and sends by itself.
    rec, hook_url = receiver
    rec.behaviour = Behaviour(delay=2)  # four times the timeout; any answer would mean no timeout
    # The retry waits 0.5 s, time enough to make the receiver quick before it comes.
    async with start_relay(RELAY_DELIVERY_TIMEOUT=0.5, RELAY_RETRY_SCHEDULE="0.5") as r:
        await register(r, "vid-slow-1", hook_url)
        job = await wait_job(
            r.client, "vid-slow-1", lambda j: bool(j["deliveries"] and j["deliveries"][0]["attempts"])
        )
        rec.behaviour = Behaviour()  # answer the retry at once
        [timed_out] = job["deliveries"][0]["attempts"][:1]
        assert timed_out["status_code"] is None
        assert "no answer within 0.5 s" in timed_out["error"]
        assert 400 <= timed_out["duration_ms"] < 1500
        job = await wait_job(r.client, "vid-slow-1", lambda j: j["delivery"] == "delivered")
    assert attempt_codes(job) == [None, 200]
    assert len(rec.accepted) == 1


# -- the outbox survives a restart ---------------------------------------------------------------


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_pending_retry_survives_a_restart(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    down_url = f"http://127.0.0.1:{unused_port()}/hook"  # nothing listens there: the receiver is down
    async with start_relay(driven=True, **RETRIES_AT_ONCE) as first:
        await register(first, "vid-restart-1", down_url, metadata={"run": 1})
        await finish(first, sim_clock)
        assert await deliver(first) == 1  # refused: a retry is written, and the relay stops before it
        job = await detail(first, "vid-restart-1")
    stopped_at = time.time()
    [delivery] = job["deliveries"]
    assert delivery["state"] == "retrying" and delivery["next_attempt_at"] is not None
    refused = delivery["attempts"][0]
    assert refused["status_code"] is None and "ConnectError" in refused["error"]
    assert rec.attempts == []

    # A new relay on the same database: the callback URL now points at the live receiver, and the
    # retry written by the first relay goes out when due, without a redeliver.
    async with start_relay(driven=True, **RETRIES_AT_ONCE) as second:
        patched = await second.client.patch("/jobs/vid-restart-1", json={"callback_url": hook_url})
        assert patched.status_code == 200, patched.text
        assert await drain(second) == 1
        job = await detail(second, "vid-restart-1")
    assert job["delivery"] == "delivered"
    [callback] = rec.accepted
    assert callback.at >= stopped_at
    assert callback.webhook_id == delivery["webhook_id"]
    assert callback.type == "job.completed"
    assert callback.body["data"]["metadata"] == {"run": 1}
    assert callback.body["data"]["upstream"]["video_status"] == 3
    assert attempt_codes(job) == [None, 200]
    assert job["deliveries"][0]["webhook_id"] == delivery["webhook_id"]
