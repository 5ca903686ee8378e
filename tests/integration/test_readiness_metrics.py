"""/readyz for each of its reasons, /metrics after real activity, Retry-After as an HTTP date, and the
callback's Content-Type (SPEC §3, §4).

Relays are driven (`driven=True`: their loops run only when stepped) except where the pollers must run
for /readyz to answer 200. A driven relay is never ready: its pollers do not run by themselves, which
is the "pollers are not running" reason, so the other reasons are asserted beside it.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import sqlalchemy as sa

from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import ManualClock, Simulator, SimulatorConfig
from tests.support.env import pg_exec
from tests.support.procs import metric_sum
from tests.support.relay import DUE_AT_ONCE, RelayFactory, RunningRelay, register, step, wait_job

POLLERS_STOPPED = "pollers are not running"


async def readiness(r: RunningRelay) -> tuple[int, dict[str, Any]]:
    response = await r.client.get("/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def reasons(r: RunningRelay) -> list[str]:
    """The reasons of a 503 (which it must be)."""
    status, body = await readiness(r)
    assert status == 503, body
    assert body["status"] == "unavailable"
    found: list[str] = body["reasons"]
    return found


# -- /readyz ---------------------------------------------------------------------------------------------


async def test_readyz_is_200_while_the_pollers_run_and_503_once_they_stop(
    start_relay: RelayFactory, simulator: tuple[Simulator, str]
) -> None:
    sim, _ = simulator
    async with start_relay() as r:
        # Akool has answered at least once (the upstream is known to accept us), and all is well.
        await register(r, "vid-ready-1")
        await wait_job(r.client, "vid-ready-1", lambda j: j["poll_count"] >= 1)
        assert any(q.code == 1000 for q in sim.requests)
        assert await readiness(r) == (200, {"status": "ok", "upstream": "ok"})

        r.relay.scheduler.shutdown(wait=False)  # the pollers' ticks end
        assert await reasons(r) == [POLLERS_STOPPED]


async def test_readyz_says_a_driven_relay_s_pollers_are_not_running(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
        assert await reasons(r) == [POLLERS_STOPPED]
        await step(r)  # stepping by hand is not running
        assert await reasons(r) == [POLLERS_STOPPED]


async def test_readyz_says_akool_refuses_our_credentials_after_one_poll(
    start_relay: RelayFactory,
) -> None:
    # An Akool that wants another account's key: every request is answered 1101.
    other = Simulator(SimulatorConfig(api_key="another-account-key"))
    async with (
        serve_in_background(other.app) as other_url,
        start_relay(driven=True, AKOOL_BASE_URL=other_url, AKOOL_API_KEY="test-key") as r,
    ):
        await register(r, "vid-refused-1")
        assert await reasons(r) == [POLLERS_STOPPED]  # nothing asked yet: nothing refused
        assert await r.relay.poll_due_jobs() == 1
        assert [q.code for q in other.requests] == [1101]
        found = await reasons(r)
        assert found[0] == POLLERS_STOPPED and len(found) == 2, found
        assert found[1].startswith("Akool refuses our credentials"), found
        assert "1101" in found[1], found
        job = (await r.client.get("/jobs/vid-refused-1")).json()
        assert job["status"] == "pending"  # refused credentials say nothing about the job


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_readyz_says_the_database_is_unavailable_while_it_is_gone(
    start_relay: RelayFactory, db_url: str, pg_template: str
) -> None:
    # SQLite cannot be taken away from a running relay (a removed file is made again on the next
    # connection); a PostgreSQL database can, for real.
    name = sa.make_url(db_url).database
    assert name
    async with start_relay(driven=True) as r:
        assert await reasons(r) == [POLLERS_STOPPED]

        await pg_exec(f'DROP DATABASE "{name}" WITH (FORCE)')  # ends the relay's connections too
        found = await reasons(r)
        assert len(found) == 2 and found[1] == POLLERS_STOPPED, found
        assert re.fullmatch(r"database unavailable \(\w+\)", found[0]), found

        await pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')  # back: ready again
        assert await reasons(r) == [POLLERS_STOPPED]


# -- /metrics ----------------------------------------------------------------------------------------


def families(text: str) -> dict[str, str]:
    """metric family → its TYPE, from the exposition's `# TYPE` lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))


async def test_metrics_name_what_spec_lists_and_count_what_happened(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    sim, _ = stepped_simulator
    rec, hook_url = receiver
    rec.behaviour = Behaviour(fail_first=1, fail_status=500)  # each callback fails once, then is taken
    async with start_relay(driven=True, RELAY_RETRY_SCHEDULE="0", **DUE_AT_ONCE) as r:
        await register(r, "vid-metrics-1", hook_url)  # completes
        await register(r, "fail-metrics-1", hook_url)  # fails at Akool
        await register(r, "unknown-metrics-1", hook_url)  # Akool does not know it (grace: 60 s)
        await step(r)  # queueing, queueing, not found; no event subscribed to yet
        sim_clock.advance(1)  # past the end of both lifecycles
        await step(r)  # completed and failed; each callback fails once
        await step(r)  # and is delivered on the retry
        jobs = {v: (await r.client.get(f"/jobs/{v}")).json() for v in ("vid-metrics-1", "fail-metrics-1")}
        assert [jobs[v]["status"] for v in jobs] == ["completed", "failed"]
        assert all(j["delivery"] == "delivered" for j in jobs.values()), jobs
        response = await r.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text

    # Every metric SPEC §3 names is there, of the right kind.
    assert families(text).items() >= {
        ("akool_relay_jobs", "gauge"),  # jobs by status
        ("akool_relay_polls_total", "counter"),  # polls and their outcomes
        ("akool_relay_upstream_latency_seconds", "histogram"),
        ("akool_relay_delivery_attempts_total", "counter"),  # deliveries and their outcomes
        ("akool_relay_events", "gauge"),  # ...and the events by delivery state
        ("akool_relay_delivery_latency_seconds", "histogram"),
    }, families(text)

    # Jobs by status, read at the scrape.
    assert metric_sum(text, "akool_relay_jobs", status="completed") == 1
    assert metric_sum(text, "akool_relay_jobs", status="failed") == 1
    assert metric_sum(text, "akool_relay_jobs", status="pending") == 1
    assert metric_sum(text, "akool_relay_jobs") == 3

    # Polls by outcome: exactly the requests the simulator answered, each with its latency.
    answered = [q.code for q in sim.requests]
    assert answered.count(1000) == 4 and answered.count(1008) >= 2, answered
    assert metric_sum(text, "akool_relay_polls_total", outcome="ok") == answered.count(1000)
    assert metric_sum(text, "akool_relay_polls_total", outcome="not_found") == answered.count(1008)
    assert metric_sum(text, "akool_relay_polls_total") == len(answered)
    assert metric_sum(text, "akool_relay_upstream_latency_seconds_count") == len(answered)
    assert metric_sum(text, "akool_relay_upstream_latency_seconds_sum") > 0

    # Deliveries by outcome: two callbacks, each failed once then delivered; one latency per attempt.
    assert len(rec.attempts) == 4 and len(rec.accepted) == 2
    assert metric_sum(text, "akool_relay_delivery_attempts_total", outcome="failed") == 2
    assert metric_sum(text, "akool_relay_delivery_attempts_total", outcome="delivered") == 2
    assert metric_sum(text, "akool_relay_delivery_attempts_total") == 4
    assert metric_sum(text, "akool_relay_events", state="delivered") == 2
    assert metric_sum(text, "akool_relay_events", state="retrying") == 0
    assert metric_sum(text, "akool_relay_delivery_latency_seconds_count") == 4
    assert metric_sum(text, "akool_relay_delivery_latency_seconds_sum") > 0

    # What went out was JSON, and said so.
    assert {a.headers.get("content-type") for a in rec.attempts} == {"application/json"}
    assert sorted(a.type for a in rec.accepted) == ["job.completed", "job.failed"]


# -- Retry-After as an HTTP date, and the callback's Content-Type ------------------------------------


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_retry_after_as_an_http_date_holds_the_next_attempt_back_until_then(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    async with start_relay(driven=True, RELAY_RETRY_SCHEDULE="0.1") as r:
        await register(r, "vid-retry-date-1", hook_url, events=["queueing"])
        assert await r.relay.poll_due_jobs() == 1
        # The receiver is down for maintenance until a moment 30 s ahead (HTTP dates have whole
        # seconds), far beyond the 0.1 s the schedule would wait.
        until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=30)
        rec.behaviour = Behaviour(
            fail_first=1, fail_status=503, retry_after=format_datetime(until, usegmt=True)
        )
        assert rec.behaviour.retry_after is not None and rec.behaviour.retry_after.endswith(" GMT")
        assert await r.relay.deliver_due() == 1

        [attempt] = rec.attempts
        assert attempt.headers.get("content-type") == "application/json"
        job = (await r.client.get("/jobs/vid-retry-date-1")).json()
        [delivery] = job["deliveries"]
        assert delivery["state"] == "retrying", delivery
        assert [a["status_code"] for a in delivery["attempts"]] == [503]
        next_attempt_at = parse_time(delivery["next_attempt_at"])
        assert until <= next_attempt_at < until + timedelta(seconds=5), (until, next_attempt_at)

        # Not before then: a step now sends nothing.
        await asyncio.sleep(0.2)  # the schedule's own 0.1 s has passed
        assert await r.relay.deliver_due() == 0
        assert len(rec.attempts) == 1
        assert time.time() < until.timestamp()
