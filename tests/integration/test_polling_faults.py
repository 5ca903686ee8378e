"""Polling against a misbehaving Akool (SPEC §1, §5): transient faults, refused credentials and the
pause they cause, token auth, and throttling, over real HTTP on loopback, on both databases.

Where the loops themselves are not the subject, the test drives them one step at a time
(`driven=True`: `poll()` below runs `poll_due_jobs()` once) and the simulated jobs move on a manual
clock. The relay's clock, the probe interval and the limiter's cool-down are the wall clock: where one
of them is the subject, the test sleeps for it and then steps.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx

from app.main import create_app
from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import ManualClock, Simulator, SimulatorConfig
from tests.support.env import relay_settings
from tests.support.relay import (
    DUE_AT_ONCE,
    LATER,
    PAST_THE_END,
    TERMINAL,
    RelayFactory,
    RunningRelay,
    detail,
    path,
    poll,
    register,
    requests_for,
    sleep_until,
    summary,
    wait_job,
    wait_until,
)


async def assert_ready_but_driven(r: RunningRelay) -> None:
    """/readyz gives no reason but the one every driven relay has: nothing schedules its loops."""
    ready = await r.client.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["reasons"] == ["pollers are not running"], ready.text


# -- 1. transient faults never decide anything ---------------------------------------------------------


async def test_upstream_faults_never_fail_a_job_and_polls_never_overlap(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    # On real time, with the loops running: "never overlap" is about polls the scheduler's ticks and
    # wakes start while earlier ones (some timing out on the wall clock) are still in flight; a driven
    # step polls each claimed job once, so overlapping polls could not happen there at all.
    sim, _ = simulator
    rec, hook_url = receiver
    sim.slow_seconds = 2  # longer than RELAY_AKOOL_TIMEOUT (1 s): a slow answer is a timeout
    sim.set_faults(http_500=0.3, bad_body=0.2, throttle=0.1, slow=0.05)
    # Each request rolls its faults without awaiting in between, so which request gets which fault
    # follows from the seed alone. With this seed the first eight requests carry every kind (with the
    # default seed 0 the first bad body was the 28th request: a slow run made fewer and failed).
    sim.rng = random.Random(58)
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
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    sim, _ = stepped_simulator
    _, hook_url = receiver
    sim.auth_failing = True
    probe_interval = 0.3  # RELAY_POLL_INTERVAL_MIN: the probe interval, and every job's interval
    vids = [f"paused-{i}" for i in range(6)]
    async with start_relay(
        driven=True, RELAY_POLL_INTERVAL_MIN=probe_interval, RELAY_POLL_INTERVAL_MAX=probe_interval
    ) as r:
        for vid in vids:
            await register(r, vid, hook_url)
        assert await r.relay.poll_due_jobs() == len(vids)  # all asked before the refusal was known

        ready = await r.client.get("/readyz")
        assert ready.status_code == 503
        assert any("credentials" in reason for reason in ready.json()["reasons"]), ready.text
        upstream = (await summary(r.client))["upstream"]
        assert upstream["state"] == "auth_failed"
        assert "1101" in (upstream["reason"] or "")
        assert upstream["consecutive_errors"] >= 1

        # While paused only the probes go out: one per RELAY_POLL_INTERVAL_MIN for the whole process,
        # however many jobs are due (all six are, from here on). Stepped every 10 ms for 0.9 s: each
        # step may take one job at most, and the steps that take one are a probe interval apart.
        jobs = [await detail(r, vid) for vid in vids]
        await sleep_until(max(datetime.fromisoformat(j["next_poll_at"]) for j in jobs))
        probes_from = len(sim.requests)
        start = time.monotonic()
        taken = []
        while time.monotonic() - start < 0.9:
            taken.append(await r.relay.poll_due_jobs())
            await asyncio.sleep(0.01)
        window = time.monotonic() - start
        assert set(taken) <= {0, 1}, taken
        probes = sim.requests[probes_from:]
        assert len(probes) == sum(taken)
        assert 1 <= len(probes) <= math.floor(window / probe_interval) + 1, (window, probes)
        assert all(q.code == 1101 for q in probes)
        for vid in vids:
            job = await detail(r, vid)
            assert job["status"] == "pending", job  # refused credentials say nothing about the job

        sim.auth_failing = False
        sim_clock.advance(PAST_THE_END)
        await asyncio.sleep(probe_interval + LATER)
        assert await r.relay.poll_due_jobs() == 1  # the probe is answered: polling resumes
        assert not r.relay.poller.health.paused
        for _ in range(10):  # the others are due: the next step takes them all (normally)
            jobs = [await detail(r, vid) for vid in vids]
            if all(job["status"] == "completed" for job in jobs):
                break
            await poll(r)
        for vid in vids:
            job = await detail(r, vid)
            assert job["status"] == "completed", job
            assert "failed" not in {t["to"] for t in job["transitions"]}
        await assert_ready_but_driven(r)
        assert await _upstream_state_is(r, "ok")
        assert not r.relay.poller.health.paused
    assert sim.overlaps == {}


async def _upstream_state_is(r: RunningRelay, state: str) -> bool:
    return bool((await summary(r.client))["upstream"]["state"] == state)


# -- 3. token auth -------------------------------------------------------------------------------------


@asynccontextmanager
async def relay_on(
    db_url: str, sim_url: str, *, driven: bool = False, **overrides: Any
) -> AsyncIterator[RunningRelay]:
    settings = relay_settings(db_url, sim_url, **overrides)
    app = create_app(settings, driven=driven)
    async with (
        serve_in_background(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        yield RunningRelay(app.state.runtime, client, base_url, settings)


async def test_token_auth_fetches_a_token_once_and_again_after_revocation(
    db_url: str, receiver: tuple[Receiver, str]
) -> None:
    rec, hook_url = receiver
    clock = ManualClock()
    sim = Simulator(
        SimulatorConfig(client_id="cid", client_secret="csecret", queue_seconds=0.1, process_seconds=0.2),
        clock=clock,
    )
    async with (
        serve_in_background(sim.app) as sim_url,
        relay_on(
            db_url,
            sim_url,
            driven=True,
            AKOOL_API_KEY=None,
            AKOOL_CLIENT_ID="cid",
            AKOOL_CLIENT_SECRET="csecret",
            **DUE_AT_ONCE,
        ) as r,
    ):
        await register(r, "tok-1", hook_url)
        assert await poll(r) == 1  # queueing
        clock.advance(PAST_THE_END)
        assert await poll(r) == 1
        job = await detail(r, "tok-1")
        assert job["status"] == "completed", job
        assert sim.token_requests == 1
        assert len(requests_for(sim, "tok-1")) == 2  # two polls, one token

        sim.revoke_tokens()
        await register(r, "tok-2", hook_url)
        assert await poll(r) == 1  # queueing
        clock.advance(PAST_THE_END)
        assert await poll(r) == 1
        job = await detail(r, "tok-2")
        assert job["status"] == "completed", job
        assert sim.token_requests == 2  # the revoked token was answered 1101 and fetched again once
        assert requests_for(sim, "tok-2")[0].code == 1101
        await assert_ready_but_driven(r)
        assert (await summary(r.client))["upstream"]["state"] == "ok"
        assert await r.relay.deliver_due() == 2
    assert len(rec.unique()) == 2
    assert sorted(c.body["data"]["video_model_id"] for c in rec.accepted) == ["tok-1", "tok-2"]


# -- 4. throttling -------------------------------------------------------------------------------------


async def test_throttling_slows_the_process_down_and_recovers(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    sim, _ = stepped_simulator
    _, hook_url = receiver
    cooldown = 1.0  # long enough that a slow step does not see the slow-down relax already
    sim.script("throttled-long", queue_seconds=30)  # keeps polling throughout
    async with start_relay(driven=True, RELAY_THROTTLE_COOLDOWN=cooldown, **DUE_AT_ONCE) as r:
        limiter = r.relay.poller.limiter
        base = limiter.base_rate
        assert base == r.settings.akool_rate_limit and limiter.rate == base
        sim.set_faults(throttle=1.0)
        await register(r, "throttled-long", hook_url)
        await register(r, "throttled-1", hook_url)
        assert await poll(r) == 2  # both answered 1005
        assert limiter.rate < base
        assert await _upstream_state_is(r, "throttled")
        await assert_ready_but_driven(r)  # throttled is not unready
        job = await detail(r, "throttled-1")
        assert job["status"] == "pending" and job["poll_count"] >= 1

        sim.set_faults()
        assert await poll(r) == 2  # queueing
        sim_clock.advance(PAST_THE_END)
        assert await poll(r) == 2
        job = await detail(r, "throttled-1")
        assert job["status"] == "completed", job
        # The limiter's cool-down runs on the wall clock: quiet cool-downs double the rate back.
        await wait_until(lambda: limiter.rate == base, 10, "the limiter back at its base rate")
        assert not limiter.throttled
        assert await poll(r) == 1  # throttled-long, still queueing; the step shares the health
        assert await _upstream_state_is(r, "ok")
    assert {q.code for q in requests_for(sim, "throttled-1")} >= {1005, 1000}


async def test_throttling_is_forgotten_once_akool_has_been_quiet_even_when_idle(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    # On real time, with the loops running: the subject is what the scheduler's ticks do while there is
    # nothing to poll (share the limiter's relaxed state), on the limiter's wall-clock cool-downs.
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
