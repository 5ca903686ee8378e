"""The relay as a real process (`akool-relay serve`), killed and stopped at awkward moments (issue 3, 1–2).

- SIGKILL at random moments while polls and deliveries are in flight, restart on the same database,
  several times: every job still reaches its right terminal status and every event the relay wrote
  reaches the receiver (deduplicated by webhook-id). Duplicates are allowed (at least once) and printed.
- SIGTERM while polls and deliveries are in flight: the process finishes them, exits 0 within a bound,
  and after a restart nothing is delivered twice.

The simulator and the receiver run in this process; the relays reach them over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import Simulator, SimulatorConfig
from tests.support.env import WEBHOOK_SECRET
from tests.support.procs import (
    RelayProcs,
    fetch,
    register_batch,
    relay_env,
    settled,
    verify_relayed,
    wait_until,
)

# Each test takes 20–60 s on a busy 2-CPU machine; the timeout leaves room for a slower runner.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

EVENTS = ["processing", "completed", "failed"]
LATE_SLACK = 1.0  # seconds after SIGTERM by which a callback attempt already under way has reached us


def sim_in_flight(sim: Simulator) -> int:
    """infobymodelid requests the simulator is answering right now."""
    return sum(sim._in_flight.values())


def receiver_in_flight(rec: Receiver) -> int:
    """Callbacks that arrived and are not answered yet (this receiver answers every one 2xx)."""
    return len(rec.attempts) - len(rec.accepted)


def scripted_jobs(
    sim: Simulator,
    rng: random.Random,
    count: int,
    prefix: str,
    queue: tuple[float, float],
    process: tuple[float, float],
) -> dict[str, str]:
    """`count` ids with spread-out lifecycles, one in ten failing; returns id -> expected terminal status."""
    outcomes = {}
    for i in range(count):
        vid = f"{prefix}-{i:04d}"
        outcome = "failed" if i % 10 == 3 else "completed"
        sim.script(
            vid, outcome=outcome, queue_seconds=rng.uniform(*queue), process_seconds=rng.uniform(*process)
        )
        outcomes[vid] = outcome
    return outcomes


async def test_sigkill_at_random_moments_loses_nothing(db_url: str, tmp_path: Any) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    jobs = 300
    sim = Simulator(SimulatorConfig(queue_seconds=0.5, process_seconds=2.5, api_key="test-key", latency=0.05))
    # Finishing times spread over ~10 s (the lifecycle starts at an id's first poll).
    outcomes = scripted_jobs(sim, rng, jobs, "crash", queue=(0.3, 7.0), process=(2.0, 3.0))
    rec = Receiver(secret=WEBHOOK_SECRET)
    rec.behaviour.delay = 0.1  # deliveries take a moment, so kills catch some in flight
    async with (
        serve_in_background(sim.app) as sim_url,
        serve_in_background(rec.app) as rec_base,
        RelayProcs(tmp_path) as procs,
    ):
        env = relay_env(
            db_url,
            sim_url,
            RELAY_LEASE_SECONDS=1.5,  # a dead process's leases come back quickly
            RELAY_POLL_INTERVAL_MIN=0.2,
            RELAY_POLL_INTERVAL_MAX=0.5,
            RELAY_POLL_CONCURRENCY=32,
            RELAY_DELIVERY_TIMEOUT=2,
            RELAY_RETRY_SCHEDULE="0.2,0.5,1,1,1,1,1,1,1,1",
        )
        relay = await procs.start("relay", env)
        started = time.monotonic()
        ids = list(outcomes)
        for i in range(0, jobs, 100):
            await register_batch(relay, ids[i : i + 100], rec.url(rec_base), EVENTS)

        kills: list[dict[str, Any]] = []
        for _ in range(3):
            # A random moment, then the first instant at which a poll and a delivery are in flight.
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            await wait_until(
                lambda: sim_in_flight(sim) > 0 and receiver_in_flight(rec) > 0,
                15,
                lambda: (
                    f"polls and deliveries in flight (sim {sim_in_flight(sim)}, receiver {receiver_in_flight(rec)})"
                ),
                interval=0.005,
            )
            moment: dict[str, Any] = {
                "at": round(time.monotonic() - started, 2),
                "polls_in_flight": sim_in_flight(sim),
                "deliveries_in_flight": receiver_in_flight(rec),
                "accepted_so_far": len(rec.accepted),
            }
            moment["exit_code"] = await relay.kill()
            kills.append(moment)
            await relay.start()

        took = await wait_until(
            lambda: settled(db_url, jobs), 150, "all jobs terminal and all events delivered", interval=0.2
        )
        # Every job ends right and every event written arrives. Which events are owed comes from the
        # state changes the relay recorded: a job that went from queueing to completed between two
        # polls (say while the relay was down) has no processing event to deliver.
        problems, figures = await verify_relayed(db_url, rec, outcomes, EVENTS)
        overall = time.monotonic() - started

    summary = (
        f"seed={seed} kills={kills} figures={figures} polls={len(sim.requests)} "
        f"overlaps={sum(sim.overlaps.values())} settled_after_last_restart={took:.1f}s wall={overall:.1f}s"
    )
    print(f"\n[hard kill, {db_url.split(':')[0]}] {summary}")
    assert len(kills) >= 3 and all(k["exit_code"] == -9 for k in kills), summary
    assert all(k["polls_in_flight"] > 0 and k["deliveries_in_flight"] > 0 for k in kills), summary
    assert not problems, "\n".join([summary, *problems])
    assert figures["jobs"] == jobs and figures["unique"] == figures["events"], summary


async def test_sigterm_finishes_in_flight_work_and_exits_0(db_url: str, tmp_path: Any) -> None:
    rng = random.Random(7)
    jobs = 80
    # Every poll takes 0.3 s and every callback 1 s, so both are in flight at the SIGTERM.
    sim = Simulator(SimulatorConfig(api_key="test-key", latency=0.3))
    outcomes = scripted_jobs(sim, rng, jobs, "term", queue=(0.2, 2.0), process=(0.5, 2.0))
    rec = Receiver(secret=WEBHOOK_SECRET)
    rec.behaviour.delay = 1.0
    async with (
        serve_in_background(sim.app) as sim_url,
        serve_in_background(rec.app) as rec_base,
        RelayProcs(tmp_path) as procs,
    ):
        env = relay_env(
            db_url,
            sim_url,
            RELAY_LEASE_SECONDS=2,
            RELAY_POLL_INTERVAL_MIN=0.2,
            RELAY_POLL_INTERVAL_MAX=0.5,
            RELAY_AKOOL_TIMEOUT=3,
            RELAY_DELIVERY_TIMEOUT=5,
            RELAY_RETRY_SCHEDULE="0.2,0.5,1,1,1,1,1,1,1,1",
        )
        relay = await procs.start("relay", env)
        await register_batch(relay, list(outcomes), rec.url(rec_base), EVENTS)
        await wait_until(
            lambda: sim_in_flight(sim) > 0 and receiver_in_flight(rec) >= 3,
            30,
            lambda: (
                f"polls and deliveries in flight (sim {sim_in_flight(sim)}, receiver {receiver_in_flight(rec)})"
            ),
            interval=0.005,
        )
        answered = {r.webhook_id for r in rec.accepted}
        deliveries_in_flight = {r.webhook_id for r in rec.attempts} - answered
        polls_in_flight = sim_in_flight(sim)
        sigterm_at = time.time()
        code, seconds = await relay.terminate(timeout=40)
        # Callback attempts that reached the receiver well after the SIGTERM: work taken after it.
        late_attempts = [r for r in rec.attempts if r.at > sigterm_at + LATE_SLACK]
        log = relay.logs()
        shutdown_log = log[log.rfind("Shutting down") :] if "Shutting down" in log else log
        unanswered_at_exit = deliveries_in_flight - {r.webhook_id for r in rec.accepted}
        answered_at_exit = len(rec.accepted)

        await relay.start()
        await wait_until(
            lambda: settled(db_url, jobs), 150, "all jobs terminal and all events delivered", interval=0.2
        )
        problems, figures = await verify_relayed(db_url, rec, outcomes, EVENTS)
        attempts_per_event = dict(
            await fetch(
                db_url,
                "SELECT e.webhook_id, count(a.id) FROM event e LEFT JOIN attempt a ON a.event_id = e.id"
                " GROUP BY e.webhook_id",
            )
        )

    tries = {wid: sum(1 for r in rec.attempts if r.webhook_id == wid) for wid in deliveries_in_flight}
    recorded = {wid: attempts_per_event.get(wid) for wid in deliveries_in_flight}
    summary = (
        f"exit_code={code} seconds_to_exit={seconds:.2f} polls_in_flight={polls_in_flight} "
        f"deliveries_in_flight={len(deliveries_in_flight)} answered_before_exit={answered_at_exit} "
        f"attempts_started_>{LATE_SLACK}s_after_SIGTERM={len(late_attempts)} figures={figures}"
    )
    print(f"\n[SIGTERM, {db_url.split(':')[0]}] {summary}")
    # Nothing lost, nothing twice.
    if rec.duplicates():
        problems.append(f"{rec.duplicates()} callbacks delivered twice")
    # The callbacks in flight at the SIGTERM were answered before the process exited, recorded as one
    # attempt each, and not sent again after the restart.
    if unanswered_at_exit:
        problems.append(f"in flight at SIGTERM, not finished before exit: {sorted(unanswered_at_exit)}")
    if any(n != 1 for n in tries.values()):
        problems.append(f"receiver attempts per in-flight webhook-id (want 1 each): {tries}")
    if any(n != 1 for n in recorded.values()):
        problems.append(f"recorded attempts per in-flight webhook-id (want 1 each): {recorded}")
    # The shutdown itself: no new work after SIGTERM, a clean log, exit 0 within the bound.
    if late_attempts:
        problems.append(
            f"{len(late_attempts)} callback attempts started more than {LATE_SLACK} s after SIGTERM "
            f"(new work taken while stopping), the last {max(r.at for r in late_attempts) - sigterm_at:.2f} s after"
        )
    errors = [line for line in shutdown_log.splitlines() if " ERROR " in line or line.startswith("Traceback")]
    if errors:
        problems.append(f"errors logged during shutdown: {errors[:4]}")
    if seconds >= 15:
        problems.append(f"took {seconds:.1f} s to exit after SIGTERM (bound: 15 s)")
    if code != 0:
        problems.append(f"exit code {code} after SIGTERM, expected 0")
    assert not problems, "\n".join([summary, *problems])
