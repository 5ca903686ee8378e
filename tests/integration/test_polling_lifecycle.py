"""Polling through a job's life (SPEC §1, §5): unknown ids, expiry, cancel, backoff and restarts,
over real HTTP on loopback, on both databases."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col

from app.db import Database
from app.models import Job
from app.sandbox.receiver import Receiver
from app.sandbox.simulator import Simulator
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

# -- 1. "does not exist" -------------------------------------------------------------------------------


async def _job_row(r: RunningRelay, vid: str) -> Job:
    async with r.relay.db.read() as session:
        job = (await session.execute(sa.select(Job).where(col(Job.video_model_id) == vid))).scalar_one()
    return job


async def test_unknown_id_fails_only_after_three_answers_over_the_grace(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    grace = 0.6
    async with start_relay(RELAY_NOT_FOUND_GRACE=grace) as r:
        await register(r, "unknown-1", hook_url)
        job = await wait_job(r.client, "unknown-1", lambda j: j["status"] in TERMINAL, timeout=5)
        row = await _job_row(r, "unknown-1")
        await rec.wait_for(lambda rc: len(rc.accepted) >= 1, 5)
    assert job["status"] == "failed", job
    assert path(job) == [("pending", "failed")]
    assert "does not exist" in (job["error_reason"] or "")
    assert job["poll_count"] >= 3
    assert row.not_found_count >= 3 and row.not_found_count == job["poll_count"]
    assert row.not_found_since is not None and row.finished_at is not None
    # The first "does not exist" answer was written at not_found_since; it failed only past the grace.
    assert (row.finished_at - row.not_found_since).total_seconds() >= grace
    answers = requests_for(sim, "unknown-1")
    assert len(answers) == job["poll_count"] and all(q.code == 1008 for q in answers)
    [callback] = rec.accepted
    assert callback.type == "job.failed" and callback.body["data"]["video_model_id"] == "unknown-1"


async def _after_answers(sim: Simulator, vid: str, n: int, then: Callable[[], None]) -> None:
    """Once Akool has answered `vid` n times in all, call `then` (before the next poll can go out)."""
    await wait_until(lambda: len(requests_for(sim, vid)) >= n, 10, f"{n} answers for {vid}")
    then()
    assert len(requests_for(sim, vid)) == n, "the next poll went out before the script changed"


async def test_with_zero_grace_only_three_not_found_answers_in_a_row_fail_a_job(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    _, hook_url = receiver

    async def unknown() -> None:
        await register(r, "unknown-2", hook_url)
        job = await wait_job(r.client, "unknown-2", lambda j: j["status"] in TERMINAL, timeout=5)
        assert job["status"] == "failed", job
        assert job["poll_count"] == 3
        assert (await _job_row(r, "unknown-2")).not_found_count == 3
        assert [q.code for q in requests_for(sim, "unknown-2")] == [1008, 1008, 1008]

    async def late() -> None:  # not found once, then there
        sim.script("late-1", outcome="unknown")
        await register(r, "late-1", hook_url)
        await _after_answers(sim, "late-1", 1, lambda: sim.script("late-1", outcome="completed"))
        job = await wait_job(r.client, "late-1", lambda j: j["status"] in TERMINAL, timeout=5)
        assert job["status"] == "completed", job
        assert requests_for(sim, "late-1")[0].code == 1008

    async def flapping() -> None:  # not found twice, found, not found twice again, found
        def answer(outcome: str) -> Callable[[], None]:
            return lambda: sim.script("flap-1", outcome=outcome, queue_seconds=0.5, process_seconds=0.1)

        answer("unknown")()
        await register(r, "flap-1", hook_url)
        await _after_answers(sim, "flap-1", 2, answer("completed"))
        await _after_answers(sim, "flap-1", 3, answer("unknown"))
        await _after_answers(sim, "flap-1", 5, answer("completed"))
        job = await wait_job(r.client, "flap-1", lambda j: j["status"] in TERMINAL, timeout=5)
        assert job["status"] == "completed", job
        assert [q.code for q in requests_for(sim, "flap-1")][:5] == [1008, 1008, 1000, 1008, 1008]

    # Grace 0: only "three answers in a row" protects these jobs. Polls are ≥ 0.18 s apart, so the
    # script changes (watched every 20 ms) land between two polls.
    async with start_relay(
        RELAY_NOT_FOUND_GRACE=0, RELAY_POLL_INTERVAL_MIN=0.2, RELAY_POLL_INTERVAL_MAX=0.3
    ) as r:
        await asyncio.gather(unknown(), late(), flapping())


# -- 2. expiry -----------------------------------------------------------------------------------------


async def test_job_expires_after_the_timeout_and_is_never_polled_again(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    sim.script("stuck-1", queue_seconds=30)
    async with start_relay(RELAY_JOB_TIMEOUT=0.5) as r:
        await register(r, "stuck-1", hook_url)
        job = await wait_job(r.client, "stuck-1", lambda j: j["status"] in TERMINAL, timeout=5)
        assert job["status"] == "expired", job
        assert path(job) == [("pending", "queueing"), ("queueing", "expired")]
        assert job["next_poll_at"] is None
        created = datetime.fromisoformat(job["created_at"])
        finished = datetime.fromisoformat(job["finished_at"])
        assert 0.5 <= (finished - created).total_seconds() < 1.5  # on time, not a poll interval late
        polls = len(requests_for(sim, "stuck-1"))
        assert polls >= 1 and job["poll_count"] == polls

        await rec.wait_for(lambda rc: len(rc.accepted) >= 1, 5)
        # Several max intervals (0.3 s) later, still no new poll.
        await asyncio.sleep(0.8)
        assert len(requests_for(sim, "stuck-1")) == polls
        job = (await r.client.get("/jobs/stuck-1")).json()
        assert job["status"] == "expired" and job["poll_count"] == polls
    [callback] = rec.accepted
    assert callback.type == "job.expired"
    assert callback.body["data"]["status"] == "expired"
    assert callback.body["data"]["video_model_id"] == "stuck-1"


async def test_jobs_expire_on_time_while_polling_is_paused(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    sim.auth_failing = True
    async with start_relay(RELAY_JOB_TIMEOUT=0.8) as r:
        await register(r, "paused-expiry-1", hook_url)
        job = await wait_job(r.client, "paused-expiry-1", lambda j: j["status"] in TERMINAL, timeout=5)
        assert job["status"] == "expired", job
        assert path(job) == [("pending", "expired")]
        assert r.relay.poller.health.paused  # Akool still refuses us; the job expired regardless
        lateness = (
            datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])
        ).total_seconds()
        assert 0.8 <= lateness < 1.8
        await rec.wait_for(lambda rc: len(rc.accepted) >= 1, 5)
    [callback] = rec.accepted
    assert callback.type == "job.expired" and callback.body["data"]["video_model_id"] == "paused-expiry-1"


# -- 3. cancel -----------------------------------------------------------------------------------------


async def test_cancel_stops_polling_and_sends_nothing(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    sim.script("cancel-1", queue_seconds=30)
    async with start_relay() as r:
        await register(r, "cancel-1", hook_url, events=["queueing", "processing", "completed"])
        await register(r, "keep-1", hook_url)
        await wait_job(r.client, "cancel-1", lambda j: j["poll_count"] >= 2)
        await rec.wait_for(lambda rc: any(c.type == "job.queueing" for c in rc.accepted), 5)

        deleted = await r.client.delete("/jobs/cancel-1")
        assert deleted.status_code == 204, deleted.text
        cancelled_at = time.monotonic()
        job = (await r.client.get("/jobs/cancel-1")).json()
        assert job["status"] == "cancelled"
        assert path(job)[-1] == ("queueing", "cancelled")
        assert job["next_poll_at"] is None and job["finished_at"] is not None

        # The other job keeps going and is called back, so the loops run while we watch this one.
        await wait_job(r.client, "keep-1", lambda j: j["delivery"] == "delivered")
        await asyncio.sleep(max(0.0, cancelled_at + 0.8 - time.monotonic()))
        # A poll claimed just before the DELETE may still reach Akool; none is claimed after it
        # (left polling, this job would have been asked 3-8 more times by now).
        late = [q for q in requests_for(sim, "cancel-1") if q.started > cancelled_at]
        assert len(late) <= 1, late
        job_after = (await r.client.get("/jobs/cancel-1")).json()
        assert job_after["status"] == "cancelled"
        assert job_after["poll_count"] <= job["poll_count"] + 1
        assert (await r.client.delete("/jobs/no-such-job")).status_code == 404
    cancel_callbacks = [c for c in rec.accepted if c.body["data"]["video_model_id"] == "cancel-1"]
    assert [c.type for c in cancel_callbacks] == ["job.queueing"]  # nothing after the cancel
    assert [c.type for c in rec.accepted if c.body["data"]["video_model_id"] == "keep-1"] == ["job.completed"]


# -- 4. backoff ----------------------------------------------------------------------------------------


def planned_interval(poll: int, lo: float, hi: float) -> float:
    """The interval after the `poll`-th poll of a job stuck in queueing: poll 1 is a change
    (pending → queueing: back to the minimum), every later one changes nothing (x1.5, capped)."""
    return min(hi, lo * 1.5 ** (poll - 1))


async def test_poll_interval_grows_while_nothing_changes_and_is_capped(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    _, hook_url = receiver
    lo, hi = 0.1, 0.4
    sim.script("slow-queue-1", queue_seconds=30)
    async with start_relay(RELAY_POLL_INTERVAL_MIN=lo, RELAY_POLL_INTERVAL_MAX=hi) as r:
        await register(r, "slow-queue-1", hook_url)
        # The relay's own plan after each poll: next_poll_at - last_polled_at (both from one clock read).
        plans: dict[int, float] = {}
        deadline = time.monotonic() + 10
        while len(requests_for(sim, "slow-queue-1")) < 8 or max(plans, default=0) < 7:
            assert time.monotonic() < deadline, f"too few polls: {plans}"
            job = (await r.client.get("/jobs/slow-queue-1")).json()
            if job["poll_count"] >= 1:
                plans[job["poll_count"]] = (
                    datetime.fromisoformat(job["next_poll_at"])
                    - datetime.fromisoformat(job["last_polled_at"])
                ).total_seconds()
            await asyncio.sleep(0.02)
        assert job["status"] == "queueing"
    for poll, seconds in plans.items():
        planned = planned_interval(poll, lo, hi)
        assert planned * 0.9 - 1e-3 <= seconds <= planned * 1.1 + 1e-3, (poll, seconds, plans)
    assert min(plans) <= 3 and max(plans) >= 6, plans  # seen while growing and once capped
    assert list(plans) == sorted(plans)  # poll_count only goes up

    # What Akool saw: never sooner than the plan. (How late a poll may come is a matter of load,
    # measured in benchmarks/, not asserted here.)
    starts = [q.started for q in requests_for(sim, "slow-queue-1")][:8]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    for poll, gap in enumerate(gaps, start=1):
        assert gap >= planned_interval(poll, lo, hi) * 0.9, (gaps, poll)


# -- 5. restart ----------------------------------------------------------------------------------------


async def test_restart_in_the_middle_loses_and_duplicates_nothing(
    start_relay: RelayFactory, db_url: str, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    vids = [f"restart-{i:02d}" for i in range(20)]
    for i, vid in enumerate(vids):  # they finish one by one over ~1.5 s
        sim.script(vid, queue_seconds=0.08 * i, process_seconds=0.6)
    async with start_relay() as r:
        batch = await r.client.post(
            "/jobs/batch", json={"jobs": [{"video_model_id": v, "callback_url": hook_url} for v in vids]}
        )
        assert batch.status_code == 200, batch.text
        assert [item["status"] for item in batch.json()["results"]] == [201] * 20
        await wait_until(
            lambda: _count_status(r, "completed", at_least=3),
            10,
            "3 completed before the restart",
            explain=lambda: _explain(r, sim),
        )
        completed_at_stop = (await summary(r.client))["jobs"]["completed"]
        assert completed_at_stop < 20, "the restart did not happen in the middle"
    # A graceful stop finishes or releases what it had claimed: nothing waits out a lease.
    assert await _leased_unfinished(db_url) == []
    async with start_relay() as r2:
        await wait_until(
            lambda: _count_status(r2, "completed", at_least=20),
            15,
            "all 20 completed",
            explain=lambda: _explain(r2, sim),
        )
        await rec.wait_for(lambda rc: len(rc.unique()) >= 20, 10)
        await wait_until(lambda: _all_delivered(r2, 20), 5, "all 20 deliveries recorded")
        s = await summary(r2.client)
        assert s["jobs"]["completed"] == 20
        assert sum(s["jobs"].values()) == 20
        assert s["oldest_unfinished_age_seconds"] is None
        pending = (
            await r2.client.get("/jobs", params={"status": ["pending", "queueing", "processing"]})
        ).json()
        assert pending["items"] == []
        for vid in vids:
            job = (await r2.client.get(f"/jobs/{vid}")).json()
            assert job["status"] == "completed" and job["delivery"] == "delivered", job
            assert len(job["deliveries"]) == 1
    unique = rec.unique()
    assert len(unique) == 20
    assert rec.duplicates() == 0, "a delivered event was sent again after a graceful restart"
    assert sorted(c.body["data"]["video_model_id"] for c in unique.values()) == vids
    assert all(c.type == "job.completed" for c in unique.values())
    assert sim.overlaps == {}


async def _explain(r: RunningRelay, sim: Simulator) -> str:
    codes = Counter((q.http_status, q.code) for q in sim.requests)
    return (
        f"summary={await summary(r.client)} akool_answers={dict(codes)} "
        f"polls_in_flight={r.relay.poller.pump.inflight} scheduler_running={r.relay.running}"
    )


async def _leased_unfinished(db_url: str) -> list[str]:
    db = Database(db_url)
    try:
        async with db.read() as session:
            rows = await session.execute(
                sa.select(col(Job.video_model_id)).where(
                    col(Job.locked_until).is_not(None), col(Job.next_poll_at).is_not(None)
                )
            )
            return sorted(rows.scalars())
    finally:
        await db.dispose()


async def _count_status(r: RunningRelay, status: str, *, at_least: int) -> bool:
    return bool((await summary(r.client))["jobs"][status] >= at_least)


async def _all_delivered(r: RunningRelay, n: int) -> bool:
    return bool((await summary(r.client))["deliveries"]["delivered"] == n)
