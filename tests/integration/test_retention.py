"""Retention (SPEC §6, RELAY_RETENTION_DAYS) on SQLite and PostgreSQL, and `video_url_expires_at` (§3).

Finished jobs whose events are all settled go once they finished longer ago than the retention, with
their transitions, events and attempts; unfinished jobs and jobs with a delivery still to be made stay;
the dashboard's trigger-kept counts stay equal to the rows. Idempotency keys go after 24 h.

The stepped tests backdate `finished_at` (and `created_at`, which a job's finish never precedes)
instead of waiting for a day to pass. The jobs to backdate are registered before the recent ones: a
pass relies on ids following registration time (app/store/retention.py).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col

from app.models import AkoolCreate, Job, utcnow
from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.simulator import ManualClock, Simulator
from app.store.retention import Deleted
from app.worker.housekeeping import Housekeeper
from tests.support.procs import fetch, relay_env
from tests.support.receivers import scripted
from tests.support.relay import DUE_AT_ONCE, RelayFactory, RunningRelay, register, summary

STEPPED: dict[str, Any] = {
    **DUE_AT_ONCE,  # every job is due again at the next step
    "RELAY_RETRY_SCHEDULE": "3600",  # a failed delivery stays `retrying` for the whole test
    "RELAY_RETENTION_DAYS": 1,
}
ALL_EVENTS = ["queueing", "processing", "completed", "failed"]


def answer(path: str, _type: str) -> tuple[int, dict[str, str]]:
    """The scripted receiver: /ok accepts, /gone answers 410 (dead at once), anything else 500."""
    return {"ok": 200, "gone": 410}.get(path, 500), {}


async def run_to_the_end(r: RunningRelay, clock: ManualClock) -> None:
    """Step the relay through queueing, processing and the end of every simulated job."""
    await r.relay.poll_due_jobs()
    await r.relay.deliver_due()
    clock.advance(0.3)  # processing
    await r.relay.poll_due_jobs()
    await r.relay.deliver_due()
    clock.advance(1)  # finished
    for _ in range(3):
        await r.relay.poll_due_jobs()
        await r.relay.deliver_due()


async def backdate(r: RunningRelay, ids: list[str], days: float) -> None:
    """Make these jobs look registered `days` + 1 and finished `days` ago."""
    finished = utcnow() - timedelta(days=days)
    async with r.relay.db.write() as session:
        await session.execute(
            sa.update(Job)
            .where(col(Job.video_model_id).in_(ids))
            .values(created_at=finished - timedelta(days=1), finished_at=finished)
        )


async def add_idempotency_keys(r: RunningRelay, ages: dict[str, float]) -> None:
    """Keys of POST /translations, made `ages[key]` hours ago."""
    async with r.relay.db.write() as session:
        for key, hours in ages.items():
            at = utcnow() - timedelta(hours=hours)
            session.add(
                AkoolCreate(key=key, request_hash="0" * 64, state="done", created_at=at, updated_at=at)
            )


async def status_rows(db_url: str) -> tuple[dict[str, int], dict[str, int]]:
    """Jobs by status and events by state, counted from the rows themselves."""
    jobs = dict(await fetch(db_url, "SELECT status, count(*) FROM job GROUP BY status"))
    events = dict(await fetch(db_url, "SELECT state, count(*) FROM event GROUP BY state"))
    return {k: int(v) for k, v in jobs.items()}, {k: int(v) for k, v in events.items()}


async def assert_counts_match_rows(r: RunningRelay, db_url: str) -> None:
    jobs, events = await status_rows(db_url)
    shown = await summary(r.client)
    assert {k: v for k, v in shown["jobs"].items() if v} == jobs
    assert {k: v for k, v in shown["deliveries"].items() if v} == events


async def rows_of(db_url: str, ids: list[str]) -> Deleted:
    """What deleting these jobs must delete: the jobs, their transitions, events and attempts."""
    quoted = ", ".join(f"'{i}'" for i in ids)
    jobs = f"SELECT id FROM job WHERE video_model_id IN ({quoted})"
    events = f"SELECT id FROM event WHERE job_id IN ({jobs})"
    [(n_jobs,)] = await fetch(db_url, f"SELECT count(*) FROM job WHERE id IN ({jobs})")
    [(n_transitions,)] = await fetch(db_url, f"SELECT count(*) FROM transition WHERE job_id IN ({jobs})")
    [(n_events,)] = await fetch(db_url, f"SELECT count(*) FROM event WHERE id IN ({events})")
    [(n_attempts,)] = await fetch(db_url, f"SELECT count(*) FROM attempt WHERE event_id IN ({events})")
    return Deleted(int(n_jobs), int(n_transitions), int(n_events), int(n_attempts))


async def job_ids(db_url: str) -> set[str]:
    return {vid for (vid,) in await fetch(db_url, "SELECT video_model_id FROM job")}


async def test_prune_deletes_settled_finished_jobs_past_the_retention_and_keeps_the_rest(
    db_url: str, start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    async with scripted(answer) as (_rec, hooks), start_relay(driven=True, **STEPPED) as r:
        plan = {
            # backdated, settled: these go
            "old-done-0": "ok",
            "old-done-1": "ok",
            "old-done-2": "ok",
            "fail-old-3": "ok",  # the simulator fails `fail…` ids
            "old-dead-4": "gone",
            "old-cancelled-5": "ok",
            "old-redelivered-6": "ok",
            # backdated, not settled or not finished: these stay
            "old-retrying-7": "retry",  # its first callback keeps failing
            "unknown-old-8": "ok",  # never exists at the simulator: pending for the whole test
            # finished and settled, but recently: stays
            "recent-done-9": "ok",
        }
        for vid, hook in plan.items():
            await register(r, vid, f"{hooks}/{hook}", events=ALL_EVENTS)
        assert (await r.client.delete("/jobs/old-cancelled-5")).status_code == 204
        await run_to_the_end(r, sim_clock)
        statuses = {vid: (await r.client.get(f"/jobs/{vid}")).json() for vid in plan}
        assert {v: (j["status"], j["delivery"]) for v, j in statuses.items()} == {
            "old-done-0": ("completed", "delivered"),
            "old-done-1": ("completed", "delivered"),
            "old-done-2": ("completed", "delivered"),
            "fail-old-3": ("failed", "delivered"),
            "old-dead-4": ("completed", "dead"),
            "old-cancelled-5": ("cancelled", "none"),
            "old-redelivered-6": ("completed", "delivered"),
            "old-retrying-7": ("completed", "pending"),  # its first event retries, the rest wait
            "unknown-old-8": ("pending", "none"),
            "recent-done-9": ("completed", "delivered"),
        }
        await backdate(r, [v for v in plan if "old" in v], days=2)
        # A delivery queued again makes a finished job unsettled: it stays while that delivery is due.
        assert (await r.client.post("/jobs/old-redelivered-6/redeliver")).status_code == 202
        going = ["old-done-0", "old-done-1", "old-done-2", "fail-old-3", "old-dead-4", "old-cancelled-5"]
        expected = await rows_of(db_url, going)
        assert expected.transitions >= 6 * 2 and expected.events >= 5 * 2 and expected.attempts >= 5 * 2

        # Two jobs per batch: the pass goes through several transactions and stops at the recent job.
        deleted = await Housekeeper(r.settings, r.relay.db, batch=2).prune()
        assert deleted == expected
        assert await job_ids(db_url) == set(plan) - set(going)
        await assert_counts_match_rows(r, db_url)
        assert await r.relay.prune() == Deleted()  # nothing more to do

        await r.relay.deliver_due()  # the redelivery is made: now it is settled too
        expected = await rows_of(db_url, ["old-redelivered-6"])
        assert await r.relay.prune() == expected
        assert await job_ids(db_url) == {"old-retrying-7", "unknown-old-8", "recent-done-9"}
        await assert_counts_match_rows(r, db_url)
        assert (await r.client.get("/jobs/old-done-0")).status_code == 404


async def test_nothing_is_deleted_when_the_retention_is_zero(
    db_url: str, start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    async with (
        scripted(answer) as (_rec, hooks),
        start_relay(driven=True, **{**STEPPED, "RELAY_RETENTION_DAYS": 0}) as r,
    ):
        await register(r, "old-kept-1", f"{hooks}/ok")
        await run_to_the_end(r, sim_clock)
        await backdate(r, ["old-kept-1"], days=10_000)
        assert await r.relay.prune() == Deleted()
        assert await job_ids(db_url) == {"old-kept-1"}


async def test_counts_follow_rows_deleted_by_cascade(
    db_url: str, start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    """The count triggers fire for events removed by ON DELETE CASCADE, not only for direct deletes."""
    async with scripted(answer) as (_rec, hooks), start_relay(driven=True, **STEPPED) as r:
        for vid, hook in (
            ("cascade-1", "ok"),
            ("cascade-2", "retry"),
            ("cascade-3", "gone"),
            ("cascade-4", "ok"),
        ):
            await register(r, vid, f"{hooks}/{hook}", events=ALL_EVENTS)
        await run_to_the_end(r, sim_clock)
        _, events = await status_rows(db_url)
        assert set(events) == {"delivered", "pending", "retrying", "dead"}, events
        async with r.relay.db.write() as session:
            await session.execute(
                sa.delete(Job).where(col(Job.video_model_id).in_(["cascade-1", "cascade-2", "cascade-3"])),
                execution_options={"synchronize_session": False},
            )
        [(orphans,)] = await fetch(
            db_url, "SELECT count(*) FROM event WHERE job_id NOT IN (SELECT id FROM job)"
        )
        assert orphans == 0
        await assert_counts_match_rows(r, db_url)


async def test_prune_command_prints_what_it_deleted(
    db_url: str,
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    tmp_path: Path,
) -> None:
    async with scripted(answer) as (_rec, hooks), start_relay(driven=True, **STEPPED) as r:
        for vid in ("old-cli-1", "old-cli-2", "recent-cli-3"):
            await register(r, vid, f"{hooks}/ok", events=ALL_EVENTS)
        await run_to_the_end(r, sim_clock)
        await backdate(r, ["old-cli-1", "old-cli-2"], days=2)
        expected = await rows_of(db_url, ["old-cli-1", "old-cli-2"])
        await add_idempotency_keys(r, {"key-old-1": 25, "key-old-2": 48, "key-recent": 23})
        sim_url = r.settings.akool_base_url

    async def prune(**env: Any) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "prune",
            env=relay_env(db_url, sim_url, **env),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode()

    # A retention of 0 keeps every job; idempotency keys still go after their 24 h.
    code, out = await prune(RELAY_RETENTION_DAYS=0)
    assert (code, out.strip().splitlines()[-1]) == (
        0,
        "deleted 0 jobs (0 transitions, 0 events, 0 attempts) and 2 idempotency keys "
        "(RELAY_RETENTION_DAYS is 0: every job is kept)",
    ), out
    assert await job_ids(db_url) == {"old-cli-1", "old-cli-2", "recent-cli-3"}
    assert {k for (k,) in await fetch(db_url, "SELECT key FROM akool_create")} == {"key-recent"}
    code, out = await prune(RELAY_RETENTION_DAYS=1)
    assert code == 0, out
    assert out.strip().splitlines()[-1] == (
        f"deleted {expected.jobs} jobs ({expected.transitions} transitions, {expected.events} events, "
        f"{expected.attempts} attempts) and 0 idempotency keys"
    )
    assert await job_ids(db_url) == {"recent-cli-3"}
    code, out = await prune(RELAY_RETENTION_DAYS=1)
    assert (
        out.strip().splitlines()[-1]
        == "deleted 0 jobs (0 transitions, 0 events, 0 attempts) and 0 idempotency keys"
    )


@pytest.mark.timeout(240)
async def test_prune_while_polling_and_delivering_loses_no_callback(
    db_url: str, start_relay: RelayFactory, receiver: tuple[Receiver, str]
) -> None:
    """The relay runs by itself (ticks, wakes); prunes run back to back with a retention of 0.864 s.

    Every callback's first attempt fails, so each job spends a while unsettled after it finished. In
    the end every job is gone, and every event each job had was delivered exactly once.
    """
    jobs, waves = 60, 3
    rec, hook_url = receiver
    rec.behaviour = Behaviour(fail_first=1)
    # Leases and timeouts longer than any stall of a busy test machine: a lease that ran out, or an
    # answer that came too late, would let a callback go twice by design (at least once), which is not
    # what this test looks for.
    settings = {
        "RELAY_POLL_INTERVAL_MIN": 0.2,
        "RELAY_POLL_INTERVAL_MAX": 0.5,
        "RELAY_LEASE_SECONDS": 60,
        "RELAY_DELIVERY_TIMEOUT": 20,
    }
    async with start_relay(RELAY_RETENTION_DAYS=0.00001, **settings) as r:
        deleted = Deleted()
        registering = True

        async def prune_until_empty() -> None:
            nonlocal deleted
            while registering or await job_ids(db_url):
                deleted += await r.relay.prune()
                await asyncio.sleep(0.05)

        pruner = asyncio.create_task(prune_until_empty())
        for w in range(waves):
            batch = [
                {"video_model_id": f"{'fail-' if i % 5 == 0 else ''}live-{w}-{i}", "callback_url": hook_url}
                | {"events": ALL_EVENTS}
                for i in range(jobs // waves)
            ]
            response = await r.client.post("/jobs/batch", json={"jobs": batch})
            assert [x["status"] for x in response.json()["results"]] == [201] * len(batch)
            await asyncio.sleep(0.4)
        registering = False
        await asyncio.wait_for(pruner, 180)  # seconds on a calm machine; a busy one may take longer
        await assert_counts_match_rows(r, db_url)

    unique = rec.unique()
    assert rec.duplicates() == 0
    assert all(x.verified for x in rec.accepted)
    assert deleted.jobs == jobs
    assert deleted.events == len(unique), "every event deleted was delivered, and nothing else arrived"
    assert deleted.attempts >= len(rec.attempts)  # every request that arrived was recorded with its job
    by_job = Counter(x.body["data"]["video_model_id"] for x in unique.values())
    assert len(by_job) == jobs
    terminal = Counter(x.type for x in unique.values() if x.type in ("job.completed", "job.failed"))
    assert terminal == {"job.completed": jobs * 4 // 5, "job.failed": jobs // 5}


async def test_video_url_expires_seven_days_after_completion(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    async with start_relay(driven=True, **STEPPED) as r:
        created = await register(r, "vid-url-1", hook_url)
        assert created["video_url_expires_at"] is None  # from the row being inserted
        await register(r, "fail-url-2", hook_url)
        await run_to_the_end(r, sim_clock)
        done = (await r.client.get("/jobs/vid-url-1")).json()
        failed = (await r.client.get("/jobs/fail-url-2")).json()
        listed = {j["video_model_id"]: j for j in (await r.client.get("/jobs")).json()["items"]}
    assert done["status"] == "completed" and done["video_url"]
    expires = datetime.fromisoformat(done["finished_at"]) + timedelta(days=7)
    assert datetime.fromisoformat(done["video_url_expires_at"]) == expires
    assert listed["vid-url-1"]["video_url_expires_at"] == done["video_url_expires_at"]
    assert failed["status"] == "failed" and failed["video_url_expires_at"] is None
    [callback] = [x for x in rec.accepted if x.type == "job.completed"]
    assert callback.body["data"]["video_url_expires_at"] == done["video_url_expires_at"]
