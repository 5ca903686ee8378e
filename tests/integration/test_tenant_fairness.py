"""Fair shares among tenants (SPEC §8), on SQLite and PostgreSQL: within a priority class, due polls
are shared among tenants, so a tenant with thousands of due jobs does not hold back another's twenty;
a disabled tenant's jobs are not polled at all.

Driven relays stepped with `poll_due_jobs()`, one poll per step (RELAY_POLL_CONCURRENCY=1): a step
is one slot of a budget of 1/STEP polls per second of the manual clock that the relay's polls and
registrations read (as in test_prediction_priority.py), so a loaded machine changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime

from app.sandbox.simulator import ManualClock, Simulator
from tests.support.relay import RelayFactory, RunningRelay
from tests.support.tenants import ADMIN, AS_ADMIN, make_tenant

MIN, MAX = 1.0, 5.0
STEP = 0.1  # seconds of the manual clock per poll: a budget of 10 polls/s
STEPS = 300  # 30 s of it
ENV = {
    "RELAY_ADMIN_TOKENS": ADMIN,
    "RELAY_POLL_INTERVAL_MIN": MIN,
    "RELAY_POLL_INTERVAL_MAX": MAX,
    "RELAY_POLL_CONCURRENCY": 1,
    "RELAY_AKOOL_RATE_LIMIT": 10_000,  # the steps are the budget; the wall clock is not
}


async def track_all(r: RunningRelay, sim: Simulator, token: str, vids: list[str]) -> None:
    """Register `vids` for the tenant of `token`: jobs that stay processing (no end in sight)."""
    for vid in vids:
        sim.script(vid, queue_seconds=0, process_seconds=3600)
    for start in range(0, len(vids), 1000):
        jobs = [
            {"video_model_id": v, "callback_url": "http://127.0.0.1:9/hook"}
            for v in vids[start : start + 1000]
        ]
        response = await r.client.post(
            "/jobs/batch", json={"jobs": jobs}, headers={"authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
        assert all(item["status"] == 201 for item in response.json()["results"]), response.text


async def run_steps(r: RunningRelay, sim: Simulator, sim_clock: ManualClock, steps: int) -> Counter[str]:
    """`steps` slots of the budget; how many polls each id got."""
    before = len(sim.requests)
    for _ in range(steps):
        await r.relay.poll_due_jobs()
        sim_clock.advance(STEP)
    return Counter(q.video_model_id for q in sim.requests[before:])


async def cancel_all(r: RunningRelay, token: str, vids: Iterable[str]) -> None:
    for vid in vids:
        response = await r.client.delete(f"/jobs/{vid}", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 204, response.text


async def test_a_tenant_with_20_due_jobs_is_polled_as_if_one_with_2000_were_absent(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    relay_clock: Callable[[], datetime],
) -> None:
    sim, _ = stepped_simulator
    async with start_relay(driven=True, **ENV) as r:
        big, small = await make_tenant(r, "big"), await make_tenant(r, "small")

        # Alone: the small tenant's 20 jobs, backing off from MIN to MAX, need at most 20/s at first
        # and 4/s later, against a budget of 10/s.
        alone_ids = [f"small-alone-{i:02d}" for i in range(20)]
        await track_all(r, sim, small["token"], alone_ids)
        alone = await run_steps(r, sim, sim_clock, STEPS)
        await cancel_all(r, small["token"], alone_ids)

        # Beside 2,000 due jobs of another tenant (200 times the budget's worth), registered first.
        big_ids = [f"big-{i:04d}" for i in range(2000)]
        shared_ids = [f"small-shared-{i:02d}" for i in range(20)]
        await track_all(r, sim, big["token"], big_ids)
        sim_clock.advance(10 * MAX)  # every one of them long overdue
        await track_all(r, sim, small["token"], shared_ids)
        shared = await run_steps(r, sim, sim_clock, STEPS)

    polled_alone = sum(alone[v] for v in alone_ids)
    polled_shared = sum(shared[v] for v in shared_ids)
    polled_big = sum(shared[v] for v in big_ids)
    # The budget was spent, and the big tenant had more due than it all along.
    assert sum(alone.values()) <= STEPS
    assert polled_shared + polled_big >= 0.95 * STEPS, (polled_shared, polled_big)
    assert polled_big >= STEPS / 2, polled_big
    # The small tenant's jobs were polled about as often as alone (within 2×), each of them.
    assert polled_shared >= polled_alone / 2, (polled_shared, polled_alone)
    assert min(shared[v] for v in shared_ids) >= min(alone[v] for v in alone_ids) / 2, (shared, alone)
    print(
        f"\nsmall tenant alone: {polled_alone} polls; beside 2,000 due jobs: {polled_shared} ({polled_big} big)"
    )


async def test_a_disabled_tenants_jobs_are_not_polled_until_it_is_enabled_again(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    relay_clock: Callable[[], datetime],
) -> None:
    sim, _ = stepped_simulator
    async with start_relay(driven=True, **ENV) as r:
        paused, running = await make_tenant(r, "paused"), await make_tenant(r, "running")
        await track_all(r, sim, paused["token"], ["paused-1", "paused-2"])
        await track_all(r, sim, running["token"], ["running-1"])
        change = await r.client.patch(f"/tenants/{paused['id']}", json={"disabled": True}, headers=AS_ADMIN)
        assert change.status_code == 200, change.text

        polled = await run_steps(r, sim, sim_clock, 50)
        assert set(polled) == {"running-1"}, polled

        change = await r.client.patch(f"/tenants/{paused['id']}", json={"disabled": False}, headers=AS_ADMIN)
        assert change.status_code == 200, change.text
        polled = await run_steps(r, sim, sim_clock, 10)
        assert {"paused-1", "paused-2"} <= set(polled), polled
