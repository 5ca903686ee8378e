"""Callback delivery (SPEC §4) over real HTTP on loopback: retries, 410, dead and redeliver, order per
job, redirects, Retry-After, timeouts, what every callback carries, and an outbox that survives a restart.
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
from app.sandbox.simulator import FAILED_ERROR_CODE, FAILED_REASON, Simulator
from tests.support.receivers import attempt_codes, scripted
from tests.support.relay import RelayFactory, register, wait_job

# -- outcomes ------------------------------------------------------------------------------------


async def test_failed_job_is_called_back_with_the_error(
    start_relay: RelayFactory, receiver: tuple[Receiver, str]
) -> None:
    rec, hook_url = receiver
    async with start_relay() as r:
        await register(r, "fail-delivery-1", hook_url)
        job = await wait_job(r.client, "fail-delivery-1", lambda j: j["delivery"] == "delivered")
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
    start_relay: RelayFactory, receiver: tuple[Receiver, str]
) -> None:
    rec, hook_url = receiver
    rec.behaviour = Behaviour(fail_first=3, fail_status=500)
    async with start_relay(RELAY_RETRY_SCHEDULE="0.1,0.1,0.1") as r:
        await register(r, "vid-retry-1", hook_url)
        job = await wait_job(r.client, "vid-retry-1", lambda j: j["delivery"] == "delivered")
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


async def test_410_gone_stops_at_once(start_relay: RelayFactory, receiver: tuple[Receiver, str]) -> None:
    rec, hook_url = receiver
    rec.behaviour = Behaviour(status=410)
    async with start_relay(RELAY_RETRY_SCHEDULE="0.1,0.1,0.1") as r:
        await register(r, "vid-gone-1", hook_url)
        job = await wait_job(r.client, "vid-gone-1", lambda j: j["delivery"] == "dead")
        [delivery] = job["deliveries"]
        assert delivery["state"] == "dead"
        assert delivery["next_attempt_at"] is None
        assert attempt_codes(job) == [410]
        # Well past the whole schedule (0.3 s plus jitter): nothing more went out.
        await asyncio.sleep(0.6)
        again = (await r.client.get("/jobs/vid-gone-1")).json()
    assert len(rec.attempts) == 1
    assert rec.accepted == []
    assert attempt_codes(again) == [410]
    assert again["delivery"] == "dead"


async def test_dead_after_the_schedule_then_redeliver(
    start_relay: RelayFactory, receiver: tuple[Receiver, str]
) -> None:
    rec, hook_url = receiver
    rec.behaviour = Behaviour(status=500)
    async with start_relay(RELAY_RETRY_SCHEDULE="0.1,0.1") as r:
        await register(r, "vid-dead-1", hook_url)
        job = await wait_job(r.client, "vid-dead-1", lambda j: j["delivery"] == "dead")
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
        await rec.wait_for(lambda x: len(x.accepted) == 1, timeout=5)
        job = await wait_job(r.client, "vid-dead-1", lambda j: j["delivery"] == "delivered")
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


async def test_events_arrive_in_order_with_metadata_and_upstream(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    sim.script("vid-order-1", queue_seconds=0.3, process_seconds=0.5)
    metadata = {"order": 42, "nested": {"tags": ["a", "b"], "ok": True}}
    async with start_relay() as r:
        await register(r, "vid-order-1", hook_url, events=EVERY_STEP, metadata=metadata)
        job = await wait_job(
            r.client, "vid-order-1", lambda j: j["status"] == "completed" and j["delivery"] == "delivered"
        )
    check_order(rec, "vid-order-1", metadata)
    assert len(rec.attempts) == len(rec.accepted)
    assert [d["webhook_id"] for d in job["deliveries"]] == [a.webhook_id for a in rec.accepted]
    assert all(d["state"] == "delivered" for d in job["deliveries"])


async def test_a_later_event_waits_for_an_earlier_one_being_retried(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    rec.behaviour = Behaviour(fail_first=2, fail_status=503)
    sim.script("vid-order-2", queue_seconds=0.3, process_seconds=0.5)
    async with start_relay(RELAY_RETRY_SCHEDULE="0.1,0.1,0.1") as r:
        await register(r, "vid-order-2", hook_url, events=EVERY_STEP, metadata={"k": 1})
        job = await wait_job(
            r.client,
            "vid-order-2",
            lambda j: j["status"] == "completed" and j["delivery"] == "delivered",
            timeout=15,
        )
    check_order(rec, "vid-order-2", {"k": 1})
    # Each event: two 503s then the 200.
    assert set(Counter(a.webhook_id for a in rec.attempts).values()) == {3}
    assert all(attempt_codes(job, i) == [503, 503, 200] for i in range(len(job["deliveries"])))
    assert [d["webhook_id"] for d in job["deliveries"]] == [a.webhook_id for a in rec.accepted]


async def test_a_dead_event_no_longer_blocks_later_ones(
    start_relay: RelayFactory, simulator: tuple[Simulator, str]
) -> None:
    sim, _ = simulator
    # Completed is written (~0.3 s) while queueing is still being retried (until ~1 s).
    sim.script("vid-unblock-1", queue_seconds=0.1, process_seconds=0.2)

    def answer(path: str, event_type: str) -> tuple[int, dict[str, str]]:
        return (500 if event_type == "job.queueing" else 200), {}

    async with scripted(answer) as (rec, base_url), start_relay(RELAY_RETRY_SCHEDULE="0.5,0.5") as r:
        await register(r, "vid-unblock-1", f"{base_url}/hook", events=["queueing", "completed"])
        job = await wait_job(
            r.client, "vid-unblock-1", lambda j: j["status"] == "completed" and j["delivery"] == "delivered"
        )
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


async def test_redirects_are_failures_and_not_followed(start_relay: RelayFactory) -> None:
    locations: list[str] = []

    def answer(path: str, event_type: str) -> tuple[int, dict[str, str]]:
        if path == "hook":
            return 302, {"location": locations[0]}
        return 200, {}

    async with scripted(answer) as (rec, base_url), start_relay(RELAY_RETRY_SCHEDULE="0.1,0.1") as r:
        locations.append(f"{base_url}/target")
        await register(r, "vid-redirect-1", f"{base_url}/hook")
        job = await wait_job(r.client, "vid-redirect-1", lambda j: j["delivery"] == "dead")
    assert [h.path for h in rec.hits] == ["hook"] * 3  # the target never got it
    assert attempt_codes(job) == [302, 302, 302]
    assert all(a["error"] == "HTTP 302" for a in job["deliveries"][0]["attempts"])


async def test_retry_after_asking_for_longer_is_honoured(
    start_relay: RelayFactory, receiver: tuple[Receiver, str]
) -> None:
    rec, hook_url = receiver
    rec.behaviour = Behaviour(fail_first=1, fail_status=503, retry_after="2")
    async with start_relay(RELAY_RETRY_SCHEDULE="0.1") as r:
        await register(r, "vid-retry-after-1", hook_url)
        job = await wait_job(r.client, "vid-retry-after-1", lambda j: j["delivery"] == "delivered")
    first, second = rec.attempts
    assert first.webhook_id == second.webhook_id
    gap = second.at - first.at
    assert 1.9 <= gap < 3.5, gap
    assert attempt_codes(job) == [503, 200]


async def test_a_slow_receiver_times_out(start_relay: RelayFactory, receiver: tuple[Receiver, str]) -> None:
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
    start_relay: RelayFactory, receiver: tuple[Receiver, str]
) -> None:
    rec, hook_url = receiver
    down_url = f"http://127.0.0.1:{unused_port()}/hook"  # nothing listens there: the receiver is down
    # Retries a second apart: the first relay stops before the next one (and if it does not, the
    # event is still retrying when the second relay starts).
    async with start_relay(RELAY_RETRY_SCHEDULE="1,1,1") as first:
        await register(first, "vid-restart-1", down_url, metadata={"run": 1})
        job = await wait_job(
            first.client,
            "vid-restart-1",
            lambda j: bool(j["deliveries"] and j["deliveries"][0]["attempts"]),
        )
    stopped_at = time.time()
    [delivery] = job["deliveries"]
    assert delivery["state"] == "retrying" and delivery["next_attempt_at"] is not None
    refused = delivery["attempts"][0]
    assert refused["status_code"] is None and "ConnectError" in refused["error"]
    assert rec.attempts == []

    # A new relay on the same database: the callback URL now points at the live receiver, and the
    # retry written by the first relay goes out when due, without a redeliver.
    async with start_relay(RELAY_RETRY_SCHEDULE="0.1,0.1,0.1") as second:
        patched = await second.client.patch("/jobs/vid-restart-1", json={"callback_url": hook_url})
        assert patched.status_code == 200, patched.text
        await rec.wait_for(lambda x: len(x.accepted) == 1, timeout=8)
        job = await wait_job(second.client, "vid-restart-1", lambda j: j["delivery"] == "delivered")
    [callback] = rec.accepted
    assert callback.at >= stopped_at
    assert callback.webhook_id == delivery["webhook_id"]
    assert callback.type == "job.completed"
    assert callback.body["data"]["metadata"] == {"run": 1}
    assert callback.body["data"]["upstream"]["video_status"] == 3
    codes = attempt_codes(job)
    assert codes[0] is None and codes[-1] == 200
    assert job["deliveries"][0]["webhook_id"] == delivery["webhook_id"]
