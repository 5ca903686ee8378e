"""Polls where news is likely (SPEC §5), on SQLite and PostgreSQL: a job's `expected_finish_at` in its
JSON, and the claim order when due polls outnumber the budget.

Driven relays stepped with `poll_due_jobs()`, against the simulator on `sim_clock`. A prediction puts
the relay's clock and the job's lifecycle on one time line, so here the relay's poll loop and its
registrations read the same manual clock (`relay_clock`): seconds of simulated time cost no wall time,
and a loaded machine changes nothing.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col

from app.db import Database
from app.models import DEFAULT_TENANT_ID, Job, utcnow
from app.sandbox.simulator import ManualClock, Simulator
from app.scheduling import PollClass, claim_at
from app.schemas import JobCreate
from app.store import polls, pushes
from app.store.jobs import new_job_row
from app.store.polls import due_ranges
from tests.support.env import relay_settings
from tests.support.relay import RelayFactory, register

MIN, MAX = 1.0, 5.0
INTERVALS = {"RELAY_POLL_INTERVAL_MIN": MIN, "RELAY_POLL_INTERVAL_MAX": MAX}
Clock = Callable[[], datetime]


async def rows_of(db: Database, vids: Iterable[str]) -> dict[str, Job]:
    async with db.read() as session:
        found = await session.scalars(sa.select(Job).where(col(Job.video_model_id).in_(list(vids))))
        return {job.video_model_id: job for job in found}


def at(job: dict[str, Any], field: str) -> datetime | None:
    value = job[field]
    return None if value is None else datetime.fromisoformat(value)


async def advance_to(sim_clock: ManualClock, clock: Clock, moment: datetime) -> None:
    """Move the shared clock forward to `moment` (never back)."""
    sim_clock.advance(max(0.0, (moment - clock()).total_seconds()))


# -- expected_finish_at ---------------------------------------------------------------------------------


async def test_expected_finish_at_is_in_the_job_json_and_closes_in_on_the_true_end(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    relay_clock: Clock,
) -> None:
    sim, _ = stepped_simulator
    vid, queue, process = "predict-1", 1.0, 40.0
    sim.script(vid, queue_seconds=queue, process_seconds=process)
    seen: list[dict[str, Any]] = []  # the job after each poll of it
    # A budget of 5/s lets one poll out per claim: every claim is full, so no poll looks ahead of an
    # estimate (that is for a budget with room, test_scheduling.py) and each goes at the estimate.
    async with start_relay(driven=True, RELAY_AKOOL_RATE_LIMIT=5, **INTERVALS) as r:
        job = await register(r, vid)
        assert "expected_finish_at" in job and job["expected_finish_at"] is None
        true_end = relay_clock() + timedelta(seconds=queue + process)  # first seen at the first poll
        while job["status"] != "completed":
            assert len(seen) < 60, seen
            next_poll_at = at(job, "next_poll_at")
            assert next_poll_at is not None
            await advance_to(sim_clock, relay_clock, next_poll_at)
            assert await r.relay.poll_due_jobs() == 1
            job = (await r.client.get(f"/jobs/{vid}")).json()
            seen.append(job)

    processing = [j for j in seen if j["status"] == "processing"]
    assert all(j["expected_finish_at"] is None for j in seen if j["status"] != "processing")
    assert seen[-1]["expected_finish_at"] is None  # completed: nothing left to expect
    # The first processing poll anchors the start of processing (progress 0 halfway since the poll
    # before): an estimate needs only a rise of MIN_RISE points after it.
    assert processing[0]["expected_finish_at"] is None, "progress 0 at the anchor says nothing yet"
    estimates = [(j, at(j, "expected_finish_at")) for j in processing]
    made = [(j, e) for j, e in estimates if e is not None]
    assert len(made) >= 3, [(j["last_polled_at"], j["progress"], j["expected_finish_at"]) for j in seen]
    for j, estimate in made:
        polled = at(j, "last_polled_at")
        assert polled is not None and estimate is not None
        error = abs((estimate - true_end).total_seconds())
        # From a quarter of the way on, within 10 % of the time then left, give or take one progress
        # point (Akool's is an integer, here 0.4 s): the estimate closes in on the true end. Before,
        # the start-of-processing anchor (up to half a poll gap off) weighs more: within 25 %.
        share = 0.1 if j["progress"] >= 25 else 0.25
        assert error <= share * (true_end - polled).total_seconds() + process / 100, (j, true_end)
    # Each estimate placed the next poll near it: within [MIN, MAX], and within ±MIN of the estimate.
    for j, expected in estimates:
        polled, due = at(j, "last_polled_at"), at(j, "next_poll_at")
        assert polled is not None and due is not None
        assert MIN <= (due - polled).total_seconds() <= MAX, j
        if expected is not None and MIN <= (expected - polled).total_seconds() <= MAX:
            assert abs((due - expected).total_seconds()) <= MIN, j
    # Once the estimate was in, the polls went toward the end: MAX apart, then one at the end.
    polls_after_estimate = len(seen) - seen.index(made[0][0])
    assert polls_after_estimate <= process / MAX + 2, polls_after_estimate


# -- claim order ---------------------------------------------------------------------------------------


async def test_under_a_small_budget_pushed_then_finish_passed_then_running_then_queued(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    relay_clock: Clock,
) -> None:
    sim, _ = stepped_simulator
    passed, fresh, queued, pushed = "prio-passed", "prio-fresh", "prio-queued", "prio-pushed"
    sim.script(passed, queue_seconds=0, process_seconds=10)  # an estimate soon
    sim.script(fresh, queue_seconds=0, process_seconds=600)  # processing, too slowly to say
    for vid in (queued, pushed):
        sim.script(vid, queue_seconds=600)
    vids = [passed, fresh, queued, pushed]

    # Enough budget: every due job is polled, until the first one has an estimate and a poll placed
    # at it (the finish will have passed when that poll is due).
    async with start_relay(driven=True, **INTERVALS) as r:
        for vid in vids:
            await register(r, vid)
        for _ in range(40):
            await r.relay.poll_due_jobs()
            jobs = await rows_of(r.relay.db, vids)
            if jobs[passed].poll_class == PollClass.FINISH_PASSED:
                break
            due = [j.next_poll_at for j in jobs.values() if j.next_poll_at is not None]
            await advance_to(sim_clock, relay_clock, min(due))
        assert jobs[passed].poll_class == PollClass.FINISH_PASSED, jobs[passed]
        assert jobs[passed].status == "processing" and jobs[passed].expected_finish_at is not None
        assert jobs[fresh].status == "processing" and jobs[fresh].expected_finish_at is None
        assert jobs[fresh].poll_class == PollClass.RUNNING
        assert {jobs[v].status for v in (queued, pushed)} == {"queueing"}
        assert {jobs[v].poll_class for v in (queued, pushed)} == {PollClass.QUEUED}

    # Then far more is due than the budget lets out: one job per claim, all due at one moment (so no
    # job is more overdue than another: that would move it up, see the aging test below), Akool
    # pushed about one.
    async with start_relay(driven=True, RELAY_POLL_CONCURRENCY=1, **INTERVALS) as r:
        moment = relay_clock()
        async with r.relay.db.write() as session:
            for job in (await rows_of(r.relay.db, vids)).values():
                klass = PollClass(job.poll_class)
                await session.execute(
                    sa.update(Job)
                    .where(col(Job.id) == job.id)
                    .values(next_poll_at=moment, claim_at=claim_at(moment, klass, MAX))
                )
        sim_clock.advance(30)
        effect = await pushes.note_push(r.relay.db, pushed, ending=True, now=relay_clock(), min_interval=MIN)
        assert effect == pushes.PushEffect.MADE_DUE
        before = len(sim.requests)
        for _ in range(len(vids)):
            assert await r.relay.poll_due_jobs() == 1
    assert [q.video_model_id for q in sim.requests[before:]] == [pushed, passed, fresh, queued]


async def test_under_saturation_queued_jobs_wait_longer_but_every_job_is_polled_within_3_max(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    relay_clock: Clock,
) -> None:
    """No starvation: a budget of one poll per half second, a dozen running jobs that would take
    up to three per second, and one queued job. Its priority grows while it waits: it is polled in turn."""
    sim, _ = stepped_simulator
    running = [f"busy-{i:02d}" for i in range(12)]
    for vid in running:
        sim.script(vid, queue_seconds=0, process_seconds=3600)
    sim.script("waiting-1", queue_seconds=3600)
    polled_at: dict[str, list[float]] = {vid: [] for vid in [*running, "waiting-1"]}  # manual seconds
    lateness: list[float] = []  # how long each poll waited past its due time
    async with start_relay(driven=True, RELAY_POLL_CONCURRENCY=1, **INTERVALS) as r:
        for vid in polled_at:
            await register(r, vid)
        for _ in range(80):  # 40 s at one poll per 0.5 s
            jobs = await rows_of(r.relay.db, polled_at)
            before = len(sim.requests)
            assert await r.relay.poll_due_jobs() == 1
            vid = sim.requests[before].video_model_id
            due = jobs[vid].next_poll_at
            assert due is not None
            lateness.append((relay_clock() - due).total_seconds())
            polled_at[vid].append(sim_clock.now)
            sim_clock.advance(0.5)
    assert statistics.mean(lateness[40:]) > MIN, f"the budget was the bottleneck: {lateness}"

    def gaps(vid: str) -> list[float]:
        times = [*polled_at[vid], sim_clock.now]  # the wait since its last poll counts too
        return [b - a for a, b in itertools.pairwise(times)]

    waiting = gaps("waiting-1")
    assert max(waiting) <= 3 * MAX, polled_at["waiting-1"]
    assert all(max(gaps(vid)) <= 3 * MAX for vid in running), polled_at
    busy = [g for vid in running for g in gaps(vid)]
    assert statistics.mean(busy) < statistics.mean(waiting), "running jobs go first"


# -- the first claim of 100,000 due jobs ------------------------------------------------------------------

BULK = 100_000


async def _insert_due(db: Database, count: int, due: datetime, url: str) -> None:
    """`count` unfinished jobs, all due at `due`, in one INSERT … SELECT: rows as the app makes them
    (`new_job_row`), numbered by a recursive CTE. Most are pending (queued), every tenth running, one
    in a thousand finish-passed: a rare class must not be looked for through the others' rows."""
    settings = relay_settings(url, "http://127.0.0.1:9", **INTERVALS)
    spec = JobCreate.model_construct(
        video_model_id="bulk", callback_url="http://127.0.0.1:9/hook", metadata={}, events=[]
    )
    row = new_job_row(spec, DEFAULT_TENANT_ID, due, settings)
    row.update(events=["completed"], next_poll_at=due)
    table = Job.metadata.tables["job"]
    numbers = sa.select(sa.literal(0).label("i")).cte("numbers", recursive=True)
    numbers = numbers.union_all(sa.select(numbers.c.i + 1).where(numbers.c.i < count - 1))
    i = numbers.c.i
    by_tenth = sa.case((i % 1000 == 2, int(PollClass.FINISH_PASSED)), (i % 10 == 1, int(PollClass.RUNNING)))
    values: dict[str, Any] = {
        name: sa.literal(value, table.c[name].type) for name, value in row.items() if name in table.c
    }
    values["video_model_id"] = sa.literal("bulk-") + sa.cast(i, sa.String)
    values["poll_class"] = sa.func.coalesce(by_tenth, int(PollClass.QUEUED))
    values["status"] = sa.case((by_tenth.is_not(None), "processing"), else_="pending")
    async with db.write() as session:
        await session.execute(
            sa.insert(table).from_select(list(values), sa.select(*values.values()).select_from(numbers))
        )


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_first_claim_of_100000_due_jobs_is_index_scans_on_both_databases(db_url: str) -> None:
    db = Database(db_url)
    sqlite = db_url.startswith("sqlite")
    try:
        # A relay compiles the claim statement at its first tick; the figure here is the database's.
        assert await polls.claim_due(db, 10, utcnow(), 30, expiring_only=False, probe=False) == []
        started = time.perf_counter()
        await _insert_due(db, BULK, utcnow() - timedelta(seconds=1), db_url)
        inserted = time.perf_counter() - started
        async with db.write() as session:
            await session.execute(sa.text("ANALYZE"))
        later = utcnow()
        plans = await _plans(db, due_ranges(later, 10, [DEFAULT_TENANT_ID]), sqlite=sqlite)
        for plan in plans:
            if sqlite:
                # One SEARCH of its class's index per class; no SCAN of job.
                assert plan.count("SEARCH job USING INDEX ix_job_tenant_next_poll_at_class_") == 3, plan
                assert "SCAN job" not in plan, plan
            else:
                # An index scan per class, the rare class through its own index (a common class may
                # go through ix_job_next_poll_at: nearly every row it meets is one of its own).
                assert plan.count("Index Scan using ") == 3, plan
                assert "Index Scan using ix_job_tenant_next_poll_at_class_0 " in plan, plan
                assert "Seq Scan" not in plan and "Bitmap" not in plan, plan
        started = time.perf_counter()
        claimed = await polls.claim_due(db, 10, later, 30, expiring_only=False, probe=False)
        took = time.perf_counter() - started
        assert len(claimed) == 10
        assert took < 0.25, f"the first claim took {took * 1000:.0f} ms\n{plans[0]}"
        print(f"\n{BULK} rows inserted in {inserted:.1f} s; first claim {took * 1000:.1f} ms")
        print("\n\n".join(plans))
    finally:
        await db.dispose()


async def _plans(db: Database, claim: sa.CompoundSelect[Any], *, sqlite: bool) -> list[str]:
    """The plan of the claim's read of the due ranges: SQLite's; PostgreSQL's for these values and its
    generic plan (the one a prepared statement may settle on after five runs, whatever the values)."""
    async with db.read() as session:
        conn = await session.connection()
        literal = str(claim.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        if sqlite:
            rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + literal)
            return ["\n".join(str(row[-1]) for row in rows)]
        custom = "\n".join(row[0] for row in await conn.exec_driver_sql("EXPLAIN " + literal))
        compiled = claim.compile(dialect=conn.dialect)
        values = []
        for name in compiled.positiontup or ():
            value = compiled.params[name]
            if isinstance(value, datetime):
                value = value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
            values.append(str(value) if isinstance(value, int) else f"'{value}'")
        await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        await conn.exec_driver_sql(f"PREPARE relay_claim AS {compiled}")
        rows = await conn.exec_driver_sql(f"EXPLAIN EXECUTE relay_claim({', '.join(values)})")
        generic = "\n".join(row[0] for row in rows)
        await session.rollback()
        return [custom, generic]
