"""Three relay processes on one PostgreSQL database share the work (issue 4, item 5; SPEC §6).

The simulator records, per video_model_id, whether two requests for it were ever in flight at once
(must be never); the receiver records deliveries per webhook-id (each exactly once when no replica
crashes). Then the same with one replica SIGKILLed halfway: every event still arrives, duplicates are
counted and printed.

PostgreSQL only (several replicas on SQLite is not a supported set-up): `pg_db_url` is a fresh copy of
conftest's migrated template; without a server the tests are skipped with the reason (a failure under
RELAY_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import Simulator, SimulatorConfig
from tests.support.env import WEBHOOK_SECRET
from tests.support.procs import (
    RelayProcess,
    RelayProcs,
    register_batch,
    relay_env,
    settled,
    terminal_count,
    verify_relayed,
    wait_until,
)

# Each test takes 65–90 s on a busy 2-CPU machine; the timeout leaves room for a slower runner.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

JOBS = 1000
BATCH = 100
EVENTS = ["completed", "failed"]  # one callback per job: 1,000 webhook-ids to count
SETTINGS = {
    "RELAY_POLL_INTERVAL_MIN": 0.2,
    "RELAY_POLL_INTERVAL_MAX": 0.5,
    "RELAY_POLL_CONCURRENCY": 32,
    "RELAY_AKOOL_RATE_LIMIT": 1000,
    "RELAY_LEASE_SECONDS": 2,
    "RELAY_DELIVERY_TIMEOUT": 3,  # outbox lease: 2 x 3 s
    "RELAY_RETRY_SCHEDULE": "0.2,0.5,1,1,1,1,1,1,1,1",
    "RELAY_DB_POOL_SIZE": 10,
    "RELAY_DB_MAX_OVERFLOW": 5,
}


def job_ids(sim: Simulator) -> dict[str, str]:
    """JOBS ids, one in ten failing; returns id -> expected terminal status."""
    outcomes = {}
    for i in range(JOBS):
        vid = f"rep-{i:04d}"
        outcomes[vid] = "failed" if i % 10 == 3 else "completed"
        sim.script(vid, outcome=outcomes[vid])
    return outcomes


async def polls_of(relay: RelayProcess) -> int:
    return int(await relay.metric("akool_relay_polls_total"))


async def run_replicas(pg_db_url: str, tmp_path: Any, *, kill_one: bool) -> dict[str, Any]:
    sim = Simulator(SimulatorConfig(queue_seconds=0.5, process_seconds=2.0, api_key="test-key"))
    outcomes = job_ids(sim)
    rec = Receiver(secret=WEBHOOK_SECRET)
    figures: dict[str, Any] = {}
    async with (
        serve_in_background(sim.app) as sim_url,
        serve_in_background(rec.app) as rec_base,
        RelayProcs(tmp_path) as procs,
    ):
        env = relay_env(pg_db_url, sim_url, **SETTINGS)
        replicas = list(await asyncio.gather(*(procs.start(f"replica{i}", env) for i in range(3))))
        started = time.monotonic()
        ids = list(outcomes)
        # Registered through different replicas: batches of 100 round-robin, the replicas side by side.
        batches = [ids[i : i + BATCH] for i in range(0, JOBS, BATCH)]

        async def register_through(k: int) -> None:
            for batch in batches[k::3]:
                await register_batch(replicas[k], batch, rec.url(rec_base), EVENTS)

        await asyncio.gather(*(register_through(k) for k in range(3)))
        figures["registered_in"] = round(time.monotonic() - started, 1)

        polls: dict[str, int] = {}
        if kill_one:
            victim = replicas[1]

            async def halfway() -> bool:
                return await terminal_count(pg_db_url) >= JOBS // 2

            await wait_until(
                halfway,
                180,
                f"{JOBS // 2} terminal jobs",
                interval=0.1,
            )
            polls[victim.name] = await polls_of(victim)
            figures["kill"] = {
                "replica": victim.name,
                "at": round(time.monotonic() - started, 2),
                "terminal_jobs": await terminal_count(pg_db_url),
                "polls_in_flight": sum(sim._in_flight.values()),
                "callbacks_in_flight": len(rec.attempts) - len(rec.accepted),
                "exit_code": await victim.kill(),
            }
        figures["settled_in"] = round(
            await wait_until(
                lambda: settled(pg_db_url, JOBS),
                180,  # CI machines are slow and shared: a wait, not a speed target
                "all jobs terminal and all events delivered",
                interval=0.2,
            ),
            1,
        )
        figures["wall"] = round(time.monotonic() - started, 1)
        for relay in replicas:
            if relay.alive:
                polls[relay.name] = await polls_of(relay)
        problems, checked = await verify_relayed(pg_db_url, rec, outcomes, EVENTS)

    figures.update(
        jobs=checked["jobs"],
        polls=len(sim.requests),
        polls_per_replica=polls,
        overlaps=sum(sim.overlaps.values()),
        events=checked["events"],
        deliveries=checked["accepted"],
        unique_deliveries=checked["unique"],
        duplicates=checked["duplicates"],
        processing_not_observed=checked["processing_not_observed"],
        problems=problems,
        overlapping_ids=dict(list(sim.overlaps.items())[:10]),
    )
    return figures


def _report(title: str, figures: dict[str, Any]) -> str:
    shown = {k: v for k, v in figures.items() if k not in ("problems", "overlapping_ids")}
    text = f"[{title}] {shown}"
    print(f"\n{text}")
    return text


async def test_three_replicas_share_the_work_exactly_once(pg_db_url: str, tmp_path: Any) -> None:
    f = await run_replicas(pg_db_url, tmp_path, kill_one=False)
    summary = _report("3 replicas", f)
    assert not f["problems"], "\n".join([summary, *f["problems"]])
    assert f["overlaps"] == 0, f"{summary}; two polls of one id in flight at once: {f['overlapping_ids']}"
    assert f["duplicates"] == 0, summary
    assert f["jobs"] == JOBS and f["unique_deliveries"] == f["events"], summary
    assert len(f["polls_per_replica"]) == 3 and all(n > 0 for n in f["polls_per_replica"].values()), (
        f"every replica must do some of the polling: {summary}"
    )


async def test_replica_killed_halfway_loses_nothing(pg_db_url: str, tmp_path: Any) -> None:
    f = await run_replicas(pg_db_url, tmp_path, kill_one=True)
    summary = _report("3 replicas, one SIGKILLed halfway", f)
    assert f["kill"]["exit_code"] == -9, summary
    assert not f["problems"], "\n".join([summary, *f["problems"]])
    # Leases (2 s) outlive every poll (the simulator answers at once), so even the killed replica's
    # polls never overlap with the survivors' retakes.
    assert f["overlaps"] == 0, f"{summary}; two polls of one id in flight at once: {f['overlapping_ids']}"
    assert f["jobs"] == JOBS and f["unique_deliveries"] == f["events"], summary
    assert len(f["polls_per_replica"]) == 3 and all(n > 0 for n in f["polls_per_replica"].values()), summary
