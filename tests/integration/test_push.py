"""Akool's push as a hint (SPEC §7): verified, it makes the job due at once; the poll decides.

The pushes are built with the sandbox's own encoder (app.sandbox.akool_push, which shares no code
with the relay's decoder) and POSTed to a relay that polls the simulator over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.sandbox.akool_push import encrypt_push
from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import ManualClock, Simulator, SimulatorConfig
from tests.support.relay import DUE_AT_ONCE, RelayFactory, RunningRelay, register, step, wait_job, wait_until

CLIENT_ID = "push-test-client"
SECRET = "0123456789abcdef0123456789abcdef"  # the API key is the client secret (32 bytes: AES-256)
PUSHABLE = {"AKOOL_API_KEY": SECRET, "AKOOL_CLIENT_ID": CLIENT_ID}
SLOW_POLLS = {"RELAY_POLL_INTERVAL_MIN": 30, "RELAY_POLL_INTERVAL_MAX": 30}  # only a push is quick


@pytest.fixture
async def simulator(sim_clock: ManualClock) -> AsyncIterator[tuple[Simulator, str]]:
    """The simulator, taking our 32-byte key, on the manual clock (overrides conftest's)."""
    sim = Simulator(SimulatorConfig(queue_seconds=0.2, process_seconds=0.4, api_key=SECRET), clock=sim_clock)
    async with serve_in_background(sim.app) as base_url:
        yield sim, base_url


def push(vid: str, status: int, **fields: Any) -> dict[str, Any]:
    return encrypt_push({"_id": vid, "status": status, "type": 2, "url": "", **fields}, CLIENT_ID, SECRET)


async def send(r: RunningRelay, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await r.client.post(
        "/akool/webhook", content=content, headers={"content-type": "application/json"}
    )


async def test_a_pushed_job_is_polled_at_once_and_its_callback_does_not_wait_for_the_interval(
    start_relay: RelayFactory, sim_clock: ManualClock, receiver: tuple[Receiver, str]
) -> None:
    rec, hook_url = receiver
    async with start_relay(**PUSHABLE, **SLOW_POLLS) as r:
        await register(r, "vid-push-1", hook_url)
        await wait_job(r.client, "vid-push-1", lambda j: j["status"] == "queueing")  # first poll, at once
        sim_clock.advance(5)  # Akool finished it; the relay's next poll is 30 s away
        started = time.monotonic()
        answer = await send(r, push("vid-push-1", 3))
        assert answer.status_code == 200 and answer.json() == {"ok": True}
        await wait_until(lambda: len(rec.accepted) == 1, 5, "the callback after the push")
        assert time.monotonic() - started < 5  # not the 30 s interval
        job = (await r.client.get("/jobs/vid-push-1")).json()
    assert job["status"] == "completed" and job["push_count"] == 1 and job["last_pushed_at"]
    assert [(t["to"], t["via"]) for t in job["transitions"]] == [("queueing", "poll"), ("completed", "push")]
    assert rec.accepted[0].type == "job.completed"


async def test_a_lost_push_still_ends_by_polling(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    async with start_relay(driven=True, **PUSHABLE, **DUE_AT_ONCE) as r:
        await register(r, "vid-nopush-1")
        await step(r)
        sim_clock.advance(5)
        await asyncio.sleep(0.01)
        await step(r)  # no push ever came
        job = (await r.client.get("/jobs/vid-nopush-1")).json()
    assert job["status"] == "completed" and job["push_count"] == 0
    assert [t["via"] for t in job["transitions"]] == ["poll", "poll"]


async def test_repeated_and_replayed_pushes_cost_one_poll_per_interval_and_no_duplicate_callback(
    start_relay: RelayFactory,
    sim_clock: ManualClock,
    simulator: tuple[Simulator, str],
    receiver: tuple[Receiver, str],
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    async with start_relay(driven=True, **PUSHABLE, **SLOW_POLLS) as r:
        await register(r, "vid-replay-1", hook_url)
        await step(r)  # queueing; next poll in 30 s
        sim_clock.advance(0.3)  # processing at Akool
        processing = push("vid-replay-1", 2)
        for _ in range(5):  # the same push again and again (a replay needs no secret)
            assert (await send(r, processing)).status_code == 200
        polled = len(sim.requests)
        assert await r.relay.poll_due_jobs() == 1  # the first push made it due
        for _ in range(5):
            assert (await send(r, processing)).status_code == 200
        assert await r.relay.poll_due_jobs() == 0  # within RELAY_POLL_INTERVAL_MIN: no more polls
        assert len(sim.requests) == polled + 1

        sim_clock.advance(5)  # completed at Akool
        ending = push("vid-replay-1", 3)
        await send(r, ending)  # an ending push is polled at once, even right after another push
        await send(r, ending)
        await step(r)
        await send(r, ending)  # the job has ended: costs nothing
        assert await r.relay.poll_due_jobs() == 0
        await r.relay.deliver_due()
        job = (await r.client.get("/jobs/vid-replay-1")).json()
    assert job["status"] == "completed"
    assert job["push_count"] == 12  # every verified push for the unfinished job; none after it ended
    assert [e.type for e in rec.accepted] == ["job.completed"]


async def test_a_lying_push_writes_no_state_and_sends_no_callback(
    start_relay: RelayFactory,
    sim_clock: ManualClock,
    simulator: tuple[Simulator, str],
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    async with start_relay(driven=True, **PUSHABLE, **SLOW_POLLS) as r:
        await register(r, "vid-lie-1", hook_url, events=["processing", "completed"])
        await step(r)
        sim_clock.advance(0.3)  # processing at Akool
        assert (await send(r, push("vid-lie-1", 3, url="https://evil.example/video.mp4"))).status_code == 200
        await step(r)  # the poll the push asked for finds it processing: Akool's answer wins
        job = (await r.client.get("/jobs/vid-lie-1")).json()
        assert job["status"] == "processing" and job["video_url"] is None
        assert [e.type for e in rec.accepted] == ["job.processing"]
        # A second ending push after that poll is limited like any other (next poll at the minimum).
        assert (await send(r, push("vid-lie-1", 3))).status_code == 200
        assert await r.relay.poll_due_jobs() == 0
    assert job["transitions"][-1]["via"] == "push"


async def test_forged_tampered_and_malformed_pushes_are_refused_and_change_nothing(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str]
) -> None:
    async with start_relay(driven=True, **PUSHABLE, **SLOW_POLLS) as r:
        await register(r, "vid-forged-1")
        await step(r)
        before = (await r.client.get("/jobs/vid-forged-1")).json()

        good = push("vid-forged-1", 3)
        forged = {**good, "signature": "0" * 40}
        wrong_secret = encrypt_push({"_id": "vid-forged-1", "status": 3}, CLIENT_ID, "f" * 32)
        wrong_client = encrypt_push({"_id": "vid-forged-1", "status": 3}, "someone-else", SECRET)
        unauthorized = [await send(r, body) for body in (forged, wrong_client)]
        assert {a.status_code for a in unauthorized} == {401}
        assert len({a.text for a in unauthorized}) == 1  # one answer for every cause

        # Signed correctly (the signature has no secret), but not encrypted with our key, or garbage.
        raw = base64.b64decode(good["dataEncrypt"])
        bad_padding = base64.b64encode(raw[:-1] + bytes([raw[-1] ^ 1])).decode()
        malformed: list[Any] = [b"not json", b"[]", {"signature": "x"}]
        for data in (wrong_secret["dataEncrypt"], bad_padding, "%%% not base64"):
            malformed.append(_resigned(good, data))
        answers = [await send(r, body) for body in malformed]
        assert {a.status_code for a in answers} == {400}, [a.text for a in answers]
        assert len({a.text for a in answers}) == 1  # no padding oracle: the same body for every cause

        assert await r.relay.poll_due_jobs() == 0  # nothing was made due
        after = (await r.client.get("/jobs/vid-forged-1")).json()
    assert after["push_count"] == 0 and after["next_poll_at"] == before["next_poll_at"]


def _resigned(envelope: dict[str, Any], data_encrypt: str) -> dict[str, Any]:
    """`envelope` with another dataEncrypt and a valid signature over it (SHA-1 of the sorted four)."""
    import hashlib

    parts = sorted([CLIENT_ID, str(envelope["timestamp"]), str(envelope["nonce"]), data_encrypt])
    return {
        **envelope,
        "dataEncrypt": data_encrypt,
        "signature": hashlib.sha1("".join(parts).encode()).hexdigest(),
    }


async def test_unknown_ids_are_answered_200_and_counted_and_pushes_need_the_client_id(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str]
) -> None:
    async with start_relay(driven=True, **PUSHABLE) as r:
        answer = await send(r, push("never-registered", 3))
        assert answer.status_code == 200 and answer.json() == {"ok": True}
        assert await r.relay.poll_due_jobs() == 0
        await send(r, {**push("never-registered", 3), "signature": "0" * 40})
        metrics = (await r.client.get("/metrics")).text
    assert 'akool_relay_pushes_total{outcome="unknown_id"} 1.0' in metrics
    assert 'akool_relay_pushes_total{outcome="bad_signature"} 1.0' in metrics
    async with start_relay(driven=True, AKOOL_API_KEY=SECRET) as r:  # no AKOOL_CLIENT_ID
        assert (await send(r, push("never-registered", 3))).status_code == 404
