"""Polling against a misbehaving Akool (SPEC §1, §5): transient faults, refused credentials and the
pause they cause, token auth, and throttling, over real HTTP on loopback, on both databases."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from app.main import create_app
from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import Simulator, SimulatorConfig
from tests.support.env import relay_settings
from tests.support.relay import (
    TERMINAL,
    RelayFactory,
    RunningRelay,
    path,
    register,
    requests_for,
    summary,
    wait_job,
    wait_until,
)

# -- 1. transient faults never decide anything ---------------------------------------------------------


async def test_upstream_faults_never_fail_a_job_and_polls_never_overlap(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    sim.slow_seconds = 2  # longer than RELAY_AKOOL_TIMEOUT (1 s): a slow answer is a timeout
    sim.set_faults(http_500=0.3, bad_body=0.2, throttle=0.1, slow=0.05)
    expected = {**{f"ok-{i}": "completed" for i in range(7)}, **{f"fail-{i}": "failed" for i in range(3)}}
    async with start_relay(RELAY_THROTTLE_COOLDOWN=0.5) as r:
        for vid in expected:
            await register(r, vid, hook_url)
        await rec.wait_for(
            lambda rc: {c.body["data"]["video_model_id"] for c in rc.accepted} >= set(expected), 20
        )
        for vid, status in expected.items():
            job = await wait_job(r.client, vid, lambda j: j["status"] in TERMINAL, timeout=5)
            assert job["status"] == status, job
            assert path(job)[-1][1] == status
            assert ("failed" in {t["to"] for t in job["transitions"]}) == (status == "failed")
            if status == "completed":
                assert job["video_url"] == f"https://sim.akool.local/videos/{vid}.mp4"
                assert job["error_code"] is None
            else:
                assert job["error_code"] == 100203
                assert job["video_url"] is None
        assert (await summary(r.client))["upstream"]["state"] != "auth_failed"

    # Every fault was really served, so the outcome above was reached through them.
    served = {(q.http_status, q.code) for q in sim.requests}
    assert (500, None) in served, "no HTTP 500 was served"
    assert (200, None) in served, "no non-envelope body was served"
    assert (200, 1005) in served, "no 1005 was served"
    assert (499, None) in served, "no slow answer was served (the relay hangs up after its timeout)"
    # One callback per job, of the right type, and no poll of a job ever overlapped another.
    by_job = {vid: {c.webhook_id: c for c in calls} for vid, calls in rec.by_job().items()}
    assert set(by_job) == set(expected)
    for vid, status in expected.items():
        [callback] = by_job[vid].values()
        assert callback.type == f"job.{status}"
        assert callback.verified
        assert callback.body["data"]["status"] == status
    assert sim.overlaps == {}


# -- 2. credentials refused: pause, probe, resume ------------------------------------------------------


async def test_auth_failure_pauses_polling_and_recovers(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    _, hook_url = receiver
    sim.auth_failing = True
    probe_interval = 0.3
    vids = [f"paused-{i}" for i in range(6)]
    async with start_relay(RELAY_POLL_INTERVAL_MIN=probe_interval, RELAY_POLL_INTERVAL_MAX=0.3) as r:
        for vid in vids:
            await register(r, vid, hook_url)

        async def paused() -> bool:
            ready = await r.client.get("/readyz")
            if ready.status_code != 503:
                return False
            reasons = ready.json()["reasons"]
            upstream = (await summary(r.client))["upstream"]
            return any("credentials" in reason for reason in reasons) and upstream["state"] == "auth_failed"

        await wait_until(paused, 5, "readyz 503 (credentials) and summary upstream auth_failed")
        upstream = (await summary(r.client))["upstream"]
        assert "1101" in (upstream["reason"] or "")
        assert upstream["consecutive_errors"] >= 1

        # While paused only the probes go out: one per RELAY_POLL_INTERVAL_MIN for the whole process,
        # however many jobs are due (unpaused, these 6 jobs would make ~18 requests in this window).
        await asyncio.sleep(probe_interval)  # let polls sent before the pause was noticed come back
        window = 0.9
        start = time.monotonic()
        await asyncio.sleep(window)
        probes = [q for q in sim.requests if q.started >= start and q.started < start + window]
        assert 1 <= len(probes) <= math.floor(window / probe_interval) + 1, probes
        assert all(q.code == 1101 for q in probes)
        for vid in vids:
            job = (await r.client.get(f"/jobs/{vid}")).json()
            assert job["status"] == "pending", job  # refused credentials say nothing about the job

        sim.auth_failing = False
        for vid in vids:
            job = await wait_job(r.client, vid, lambda j: j["status"] == "completed", timeout=10)
            assert "failed" not in {t["to"] for t in job["transitions"]}
        ready = await r.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        await wait_until(
            lambda: _upstream_state_is(r, "ok"), 3, "summary upstream state back to ok after recovery"
        )
        assert not r.relay.poller.health.paused
    assert sim.overlaps == {}


async def _upstream_state_is(r: RunningRelay, state: str) -> bool:
    return bool((await summary(r.client))["upstream"]["state"] == state)


# -- 3. token auth -------------------------------------------------------------------------------------


@asynccontextmanager
async def relay_on(db_url: str, sim_url: str, **overrides: Any) -> AsyncIterator[RunningRelay]:
    settings = relay_settings(db_url, sim_url, **overrides)
    app = create_app(settings)
    async with (
        serve_in_background(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        yield RunningRelay(app.state.relay, client, base_url, settings)


async def test_token_auth_fetches_a_token_once_and_again_after_revocation(
    db_url: str, receiver: tuple[Receiver, str]
) -> None:
    rec, hook_url = receiver
    sim = Simulator(
        SimulatorConfig(client_id="cid", client_secret="csecret", queue_seconds=0.1, process_seconds=0.2)
    )
    async with (
        serve_in_background(sim.app) as sim_url,
        relay_on(
            db_url, sim_url, AKOOL_API_KEY=None, AKOOL_CLIENT_ID="cid", AKOOL_CLIENT_SECRET="csecret"
        ) as r,
    ):
        await register(r, "tok-1", hook_url)
        job = await wait_job(r.client, "tok-1", lambda j: j["status"] in TERMINAL)
        assert job["status"] == "completed", job
        assert sim.token_requests == 1
        assert len(requests_for(sim, "tok-1")) >= 2  # several polls, one token

        sim.revoke_tokens()
        await register(r, "tok-2", hook_url)
        job = await wait_job(r.client, "tok-2", lambda j: j["status"] in TERMINAL)
        assert job["status"] == "completed", job
        assert sim.token_requests == 2  # the revoked token was answered 1101 and fetched again once
        assert requests_for(sim, "tok-2")[0].code == 1101
        assert (await r.client.get("/readyz")).status_code == 200
        assert (await summary(r.client))["upstream"]["state"] == "ok"
        await rec.wait_for(lambda rc: len(rc.unique()) == 2, 5)
    assert sorted(c.body["data"]["video_model_id"] for c in rec.accepted) == ["tok-1", "tok-2"]


# -- 4. throttling -------------------------------------------------------------------------------------


async def test_throttling_slows_the_process_down_and_recovers(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    _, hook_url = receiver
    sim.script("throttled-long", queue_seconds=30)  # keeps polling throughout
    async with start_relay(RELAY_THROTTLE_COOLDOWN=0.3) as r:
        limiter = r.relay.poller.limiter
        base = limiter.base_rate
        assert base == r.settings.akool_rate_limit and limiter.rate == base
        sim.set_faults(throttle=1.0)
        await register(r, "throttled-long", hook_url)
        await register(r, "throttled-1", hook_url)
        await wait_until(lambda: limiter.rate < base, 5, "the limiter to slow down")
        await wait_until(lambda: _upstream_state_is(r, "throttled"), 5, "summary upstream throttled")
        assert (await r.client.get("/readyz")).status_code == 200  # throttled is not unready
        job = (await r.client.get("/jobs/throttled-1")).json()
        assert job["status"] == "pending" and job["poll_count"] >= 1

        sim.set_faults()
        job = await wait_job(r.client, "throttled-1", lambda j: j["status"] in TERMINAL, timeout=10)
        assert job["status"] == "completed", job
        await wait_until(lambda: limiter.rate == base, 10, "the limiter back at its base rate")
        await wait_until(lambda: _upstream_state_is(r, "ok"), 5, "summary upstream back to ok")
    assert {q.code for q in requests_for(sim, "throttled-1")} >= {1005, 1000}


async def test_throttling_is_forgotten_once_akool_has_been_quiet_even_when_idle(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    _, hook_url = receiver
    cooldown = 0.5
    async with start_relay(RELAY_THROTTLE_COOLDOWN=cooldown) as r:
        limiter = r.relay.poller.limiter
        base = limiter.base_rate
        sim.set_faults(throttle=1.0)
        vids = [f"idle-throttled-{i}" for i in range(4)]
        for vid in vids:
            await register(r, vid, hook_url)
        # Deep enough that the few polls left after the fault clears cannot undo it on their own.
        await wait_until(lambda: limiter.rate <= base / 4, 8, "the rate down to a quarter")
        await wait_until(lambda: _upstream_state_is(r, "throttled"), 5, "summary upstream throttled")
        sim.set_faults()  # the simulated jobs have finished meanwhile (their clocks started at poll 1)
        for vid in vids:
            job = await wait_job(r.client, vid, lambda j: j["status"] in TERMINAL, timeout=5)
            assert job["status"] == "completed", job
        # Nothing is left to poll. Each quiet cool-down doubles the rate back (1005 slows the process
        # down for a while, it does not leave it slowed): past that, the process is at its full rate
        # again and the dashboard no longer reports a throttled upstream.
        rate = limiter.rate
        quiet_for = cooldown * (math.ceil(math.log2(base / rate)) + 1)
        await asyncio.sleep(quiet_for)
        await wait_until(
            lambda: _upstream_state_is(r, "ok"),
            2,
            f"summary upstream back to ok after {quiet_for} s idle (limiter.rate {rate} of {base})",
        )
