"""Polling through a job's life (SPEC §1, §5): unknown ids, expiry, cancel, backoff and restarts,
over real HTTP on loopback, on both databases.

The relay's loops are driven one step at a time (`driven=True`: `poll()` and `deliver()` below run
`poll_due_jobs()` / `deliver_due()` once) and the simulated jobs move on `sim_clock`; only the restart
test runs the loops on their own. The relay's clock is the wall clock: where a deadline or a grace
period is the subject, the test waits for it with `sleep_until()` and then steps.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from app.db import Database
from app.models import Job
from app.sandbox.receiver import Receiver
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.relay import (
    DUE_AT_ONCE,
    PAST_THE_END,
    RelayFactory,
    RunningRelay,
    deliver,
    detail,
    path,
    poll,
    register,
    requests_for,
    sleep_until,
    summary,
    wait_until,
)


def at(job: dict[str, Any], key: str) -> datetime:
    return datetime.fromisoformat(job[key])


# -- 1. "does not exist" -------------------------------------------------------------------------------


async def _job_row(r: RunningRelay, vid: str) -> Job:
    async with r.relay.db.read() as session:
        job = (await session.execute(sa.select(Job).where(col(Job.video_model_id) == vid))).scalar_one()
    return job


async def test_unknown_id_fails_only_after_three_answers_over_the_grace(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    receiver: tuple[Receiver, str],
) -> None:
    sim, _ = stepped_simulator
    rec, hook_url = receiver
    grace = 0.5
    async with start_relay(driven=True, RELAY_NOT_FOUND_GRACE=grace, **DUE_AT_ONCE) as r:
        await register(r, "unknown-1", hook_url)
        for _ in range(3):
            assert await poll(r) == 1
        row = await _job_row(r, "unknown-1")
        assert row.not_found_since is not None and row.last_polled_at is not None
        # Three answers fail it only once the grace has passed since the first (the polls normally
        # take milliseconds; on a slow machine the third may already come after the grace).
        within_grace = row.last_polled_at - row.not_found_since < timedelta(seconds=grace)
        assert row.status == ("pending" if within_grace else "failed"), row
        if within_grace:
            assert row.not_found_count == 3 and await deliver(r) == 0
            # Past the grace, the next "does not exist" fails it.
            await sleep_until(row.not_found_since + timedelta(seconds=grace))
            assert await poll(r) == 1
        assert await deliver(r) == 1
        job = await detail(r, "unknown-1")
        row = await _job_row(r, "unknown-1")
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


async def test_with_zero_grace_only_three_not_found_answers_in_a_row_fail_a_job(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    sim, _ = stepped_simulator
    _, hook_url = receiver

    def flap(outcome: str) -> None:
        sim.script("flap-1", outcome=outcome, queue_seconds=0.5, process_seconds=0.1)

    # Grace 0: only "three answers in a row" protects these jobs. Each poll step polls all three; the
    # scripts change between two steps.
    #   unknown-2: not found, not found, not found (failed)
    #   late-1:    not found, then there
    #   flap-1:    not found twice, found, not found twice again, found
    sim.script("late-1", outcome="unknown")
    flap("unknown")
    async with start_relay(driven=True, RELAY_NOT_FOUND_GRACE=0, **DUE_AT_ONCE) as r:
        for vid in ("unknown-2", "late-1", "flap-1"):
            await register(r, vid, hook_url)
        assert await poll(r) == 3
        sim.script("late-1", outcome="completed")
        assert await poll(r) == 3
        flap("completed")
        assert await poll(r) == 3  # unknown-2 fails at its third answer
        job = await detail(r, "unknown-2")
        assert job["status"] == "failed", job
        assert job["poll_count"] == 3
        assert (await _job_row(r, "unknown-2")).not_found_count == 3
        flap("unknown")
        assert await poll(r) == 2
        assert await poll(r) == 2
        assert (await detail(r, "flap-1"))["status"] == "queueing"  # two in a row, after an answer
        flap("completed")
        sim_clock.advance(PAST_THE_END)
        assert await poll(r) == 2
        assert await poll(r) == 0
        late, flapping = await detail(r, "late-1"), await detail(r, "flap-1")
    assert [q.code for q in requests_for(sim, "unknown-2")] == [1008, 1008, 1008]
    assert late["status"] == "completed", late
    assert requests_for(sim, "late-1")[0].code == 1008
    assert flapping["status"] == "completed", flapping
    assert [q.code for q in requests_for(sim, "flap-1")][:5] == [1008, 1008, 1000, 1008, 1008]


# -- 2. expiry -----------------------------------------------------------------------------------------

# Poll intervals far longer than the jobs' timeouts: a job can only be polled on time at its deadline.
LONG_INTERVALS: dict[str, Any] = {"RELAY_POLL_INTERVAL_MIN": 30, "RELAY_POLL_INTERVAL_MAX": 60}


async def poll_at(r: RunningRelay, deadline: datetime) -> None:
    """Step before the deadline (the one job is not due: nothing is polled), then at it (it is)."""
    polled = await r.relay.poll_due_jobs()
    if not polled:
        await sleep_until(deadline)
        polled = await r.relay.poll_due_jobs()
    # Polled at the first step only if that step was slow enough to reach the deadline: the job then
    # expires without a poll (asserted by the callers), not polled early.
    assert polled == 1


async def test_job_expires_after_the_timeout_and_is_never_polled_again(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = stepped_simulator
    rec, hook_url = receiver
    timeout = 1.0
    async with start_relay(driven=True, RELAY_JOB_TIMEOUT=timeout, **LONG_INTERVALS) as r:
        await register(r, "stuck-1", hook_url)
        assert await r.relay.poll_due_jobs() == 1  # queueing (the simulated clock never moves)
        job = await detail(r, "stuck-1")
        assert job["status"] == "queueing"
        created = at(job, "created_at")
        deadline = created + timedelta(seconds=timeout)
        # The next poll is planned at the deadline, not an interval (30 s) later.
        assert at(job, "next_poll_at") == deadline, job
        await poll_at(r, deadline)
        job = await detail(r, "stuck-1")
        assert job["status"] == "expired", job
        assert path(job) == [("pending", "queueing"), ("queueing", "expired")]
        assert job["next_poll_at"] is None
        finished = at(job, "finished_at")
        assert timeout <= (finished - created).total_seconds() < timeout + 1  # on time, not an interval late
        polls = len(requests_for(sim, "stuck-1"))
        assert polls == 1 and job["poll_count"] == polls  # expiring asks Akool nothing

        assert await r.relay.deliver_due() == 1
        # Later steps poll it no more.
        assert [await r.relay.poll_due_jobs() for _ in range(3)] == [0, 0, 0]
        assert len(requests_for(sim, "stuck-1")) == polls
        job = await detail(r, "stuck-1")
        assert job["status"] == "expired" and job["poll_count"] == polls
    [callback] = rec.accepted
    assert callback.type == "job.expired"
    assert callback.body["data"]["status"] == "expired"
    assert callback.body["data"]["video_model_id"] == "stuck-1"


async def test_jobs_expire_on_time_while_polling_is_paused(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = stepped_simulator
    rec, hook_url = receiver
    sim.auth_failing = True
    timeout = 1.0
    # RELAY_POLL_INTERVAL_MIN (30 s) is also the probe interval: no probe goes out during the test.
    async with start_relay(driven=True, RELAY_JOB_TIMEOUT=timeout, **LONG_INTERVALS) as r:
        await register(r, "paused-expiry-1", hook_url)
        assert await r.relay.poll_due_jobs() == 1  # Akool refuses our credentials: polling pauses
        assert r.relay.poller.health.paused
        job = await detail(r, "paused-expiry-1")
        assert job["status"] == "pending", job
        deadline = at(job, "created_at") + timedelta(seconds=timeout)
        assert at(job, "next_poll_at") == deadline, job
        await poll_at(r, deadline)  # paused, but a job past its deadline is still taken
        job = await detail(r, "paused-expiry-1")
        assert job["status"] == "expired", job
        assert path(job) == [("pending", "expired")]
        assert r.relay.poller.health.paused  # Akool still refuses us; the job expired regardless
        lateness = (at(job, "finished_at") - at(job, "created_at")).total_seconds()
        assert timeout <= lateness < timeout + 1
        assert len(requests_for(sim, "paused-expiry-1")) == 1
        assert await r.relay.deliver_due() == 1
    [callback] = rec.accepted
    assert callback.type == "job.expired" and callback.body["data"]["video_model_id"] == "paused-expiry-1"


# -- 3. cancel -----------------------------------------------------------------------------------------


async def test_cancel_stops_polling_and_sends_nothing(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    sim, _ = stepped_simulator
    rec, hook_url = receiver
    sim.script("cancel-1", queue_seconds=30)
    async with start_relay(driven=True, **DUE_AT_ONCE) as r:
        await register(r, "cancel-1", hook_url, events=["queueing", "processing", "completed"])
        await register(r, "keep-1", hook_url)
        assert await poll(r) == 2 and await deliver(r) == 1  # cancel-1's queueing callback
        assert await poll(r) == 2
        assert any(c.type == "job.queueing" for c in rec.accepted)

        deleted = await r.client.delete("/jobs/cancel-1")
        assert deleted.status_code == 204, deleted.text
        asked = len(requests_for(sim, "cancel-1"))
        job = await detail(r, "cancel-1")
        assert job["status"] == "cancelled"
        assert job["poll_count"] == asked == 2
        assert path(job)[-1] == ("queueing", "cancelled")
        assert job["next_poll_at"] is None and job["finished_at"] is not None

        # The other job keeps going and is called back, so the loops run while we watch this one:
        # every poll step takes keep-1 only.
        sim_clock.advance(PAST_THE_END)
        assert await poll(r) == 1 and await deliver(r) == 1
        assert await poll(r) == 0 and await deliver(r) == 0
        assert (await detail(r, "keep-1"))["delivery"] == "delivered"
        assert len(requests_for(sim, "cancel-1")) == asked
        job_after = await detail(r, "cancel-1")
        assert job_after["status"] == "cancelled"
        assert job_after["poll_count"] == job["poll_count"]
        assert (await r.client.delete("/jobs/no-such-job")).status_code == 404
    cancel_callbacks = [c for c in rec.accepted if c.body["data"]["video_model_id"] == "cancel-1"]
    assert [c.type for c in cancel_callbacks] == ["job.queueing"]  # nothing after the cancel
    assert [c.type for c in rec.accepted if c.body["data"]["video_model_id"] == "keep-1"] == ["job.completed"]


# -- 4. backoff ----------------------------------------------------------------------------------------

LO, HI = 0.1, 0.3  # RELAY_POLL_INTERVAL_MIN and _MAX
BACKOFF_POLLS = 6  # planned 0.1, 0.15, 0.225, then capped at 0.3 three times
BACKOFF_JOBS = 10  # each plan jittered by ±10 %: with this many, a jitter that leaves [MIN, MAX] shows


def planned_interval(poll: int, lo: float, hi: float) -> float:
    """The interval after the `poll`-th poll of a job stuck in queueing: poll 1 is a change
    (pending → queueing: back to the minimum), every later one changes nothing (x1.5, capped)."""
    return min(hi, lo * 1.5 ** (poll - 1))


async def test_poll_interval_grows_while_nothing_changes_and_stays_within_min_and_max(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = stepped_simulator
    _, hook_url = receiver
    vids = [f"slow-queue-{i}" for i in range(BACKOFF_JOBS)]
    assert planned_interval(3, LO, HI) < HI == planned_interval(BACKOFF_POLLS, LO, HI)  # grows, then capped
    # The simulated clock never moves: every job stays queueing.
    async with start_relay(driven=True, RELAY_POLL_INTERVAL_MIN=LO, RELAY_POLL_INTERVAL_MAX=HI) as r:
        for vid in vids:
            await register(r, vid, hook_url)
        # The relay's own plan after each poll: next_poll_at - last_polled_at (both from one clock read),
        # by job and poll_count. Steps every few milliseconds: a job is polled as soon as it is due.
        plans: dict[str, dict[int, float]] = {vid: {} for vid in vids}
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while min(len(p) for p in plans.values()) < BACKOFF_POLLS:
            assert datetime.now(UTC) < deadline, f"too few polls: {plans}"
            if not await poll(r):
                continue
            listing = await r.client.get("/jobs", params={"limit": 50})
            assert listing.status_code == 200, listing.text
            for job in listing.json()["items"]:
                assert job["status"] == "queueing", job
                if job["poll_count"] >= 1:
                    plan = at(job, "next_poll_at") - at(job, "last_polled_at")
                    plans[job["video_model_id"]][job["poll_count"]] = plan.total_seconds()
    for vid, by_poll in plans.items():
        assert list(by_poll) == list(range(1, len(by_poll) + 1)), (vid, by_poll)  # every poll was seen
        for poll_number, seconds in by_poll.items():
            planned = planned_interval(poll_number, LO, HI)
            # SPEC §5: never sooner than the minimum nor later than the maximum, jitter included ...
            assert LO <= seconds <= HI, (vid, poll_number, seconds, by_poll)
            # ... and otherwise within the jitter (±10 %) of the backoff's interval.
            assert planned * 0.9 - 1e-6 <= seconds <= planned * 1.1 + 1e-6, (vid, poll_number, by_poll)
        # What Akool saw: one request per poll, and never one sooner than the plan before it.
        starts = [q.started for q in requests_for(sim, vid)]
        assert len(starts) == len(by_poll), (vid, len(starts), by_poll)
        for poll_number, (a, b) in enumerate(itertools.pairwise(starts), start=1):
            assert b - a >= by_poll[poll_number] - 1e-3, (vid, poll_number, b - a, by_poll)


# -- 5. restart ----------------------------------------------------------------------------------------


async def test_restart_in_the_middle_loses_and_duplicates_nothing(
    start_relay: RelayFactory, db_url: str, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    # On real time, with the loops running: the subject is a graceful stop with polls and deliveries
    # in flight (a driven relay has none when it stops), and a restart picking up the rest by itself.
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
