"""One Akool job, many subscriptions (SPEC §8), on SQLite and PostgreSQL: an id several tenants track
is polled once, each tenant gets its own callbacks signed with its own secret, one tenant's failing
receiver holds back nobody else's, a new subscription to a tracked id looks like one to an unknown id,
and the lead passes on when its subscription ends or its tenant is disabled.

Driven relays stepped with `poll()` and `deliver()` against the simulator on its manual clock, with
real receivers over loopback HTTP.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.models import Job
from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.relay import (
    DUE_AT_ONCE,
    HOOK,
    RelayFactory,
    RunningRelay,
    deliver,
    drain,
    poll,
    requests_for,
)
from tests.support.tenants import ADMIN, AS_ADMIN, bearer, make_tenant

ENV = {"RELAY_ADMIN_TOKENS": ADMIN, "RELAY_RETRY_SCHEDULE": "0.001,0.001,0.001,0.001", **DUE_AT_ONCE}
TERMINAL = {"completed", "failed", "expired", "cancelled"}


async def track(r: RunningRelay, tenant: dict[str, Any], vid: str, url: str = HOOK) -> dict[str, Any]:
    response = await r.client.post(
        "/jobs", json={"video_model_id": vid, "callback_url": url}, headers=bearer(tenant["token"])
    )
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def view(r: RunningRelay, tenant: dict[str, Any], vid: str) -> dict[str, Any]:
    response = await r.client.get(f"/jobs/{vid}", headers=bearer(tenant["token"]))
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def verifies(secret: str, raw: bytes, headers: dict[str, str]) -> bool:
    try:
        Webhook(secret).verify(raw, headers)
    except WebhookVerificationError:
        return False
    return True


async def run_to_the_end(r: RunningRelay, sim_clock: ManualClock, steps: int = 200) -> None:
    """Poll steps, 0.05 s of the simulator's clock apart, until nothing is due any more."""
    for _ in range(steps):
        sim_clock.advance(0.05)
        if not await poll(r) and sim_clock.now > 2:
            return
    raise AssertionError("jobs still due after all the steps")


async def test_an_id_two_tenants_track_is_polled_as_one_and_each_gets_its_own_signed_callback(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    sim, _ = stepped_simulator
    for vid in ("shared-1", "solo-1"):
        sim.script(vid, queue_seconds=0.3, process_seconds=0.6)
    rec_a, rec_b = Receiver(), Receiver()
    async with (
        serve_in_background(rec_a.app) as base_a,
        serve_in_background(rec_b.app) as base_b,
        start_relay(driven=True, **ENV) as r,
    ):
        a, b = await make_tenant(r, "alpha"), await make_tenant(r, "beta")
        await track(r, a, "shared-1", rec_a.url(base_a))
        await track(r, b, "shared-1", rec_b.url(base_b))
        await track(r, a, "solo-1", rec_a.url(base_a))
        await run_to_the_end(r, sim_clock)
        await drain(r)
        mine, theirs, solo = (
            await view(r, a, "shared-1"),
            await view(r, b, "shared-1"),
            await view(r, a, "solo-1"),
        )

    # Polled as one: the simulator saw the shared id as often as the id one tenant tracks (both are
    # polled every step: the planned waits are 1 ms), and each subscription counts every poll.
    assert len(requests_for(sim, "shared-1")) == len(requests_for(sim, "solo-1")) == solo["poll_count"]
    assert mine["poll_count"] == theirs["poll_count"] == solo["poll_count"]
    assert mine["status"] == theirs["status"] == "completed"
    assert [(t["from"], t["to"]) for t in mine["transitions"]] == [
        (t["from"], t["to"]) for t in theirs["transitions"]
    ]
    assert mine["video_url"] == theirs["video_url"] is not None

    # Each tenant got its own callback for the shared id, signed with its own secret alone.
    (got_a,) = rec_a.by_job()["shared-1"]
    (got_b,) = rec_b.by_job()["shared-1"]
    assert got_a.webhook_id != got_b.webhook_id
    assert verifies(a["webhook_secret"], got_a.raw, got_a.headers)
    assert not verifies(b["webhook_secret"], got_a.raw, got_a.headers)
    assert verifies(b["webhook_secret"], got_b.raw, got_b.headers)
    assert not verifies(a["webhook_secret"], got_b.raw, got_b.headers)
    assert "beta" not in got_a.raw.decode() and "alpha" not in got_b.raw.decode()


async def test_one_tenants_failing_receiver_does_not_hold_back_anothers_callback_for_the_same_job(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    sim, _ = stepped_simulator
    sim.script("shared-2", queue_seconds=0, process_seconds=0.2)
    failing, working = Receiver(behaviour=Behaviour(fail_first=10**6)), Receiver()
    events = ["queueing", "processing", "completed", "failed"]
    async with (
        serve_in_background(failing.app) as base_f,
        serve_in_background(working.app) as base_w,
        start_relay(driven=True, **{**ENV, "RELAY_RETRY_SCHEDULE": "60,60,60"}) as r,
    ):
        a, b = await make_tenant(r, "down"), await make_tenant(r, "up")
        for tenant, url in ((a, failing.url(base_f)), (b, working.url(base_w))):
            response = await r.client.post(
                "/jobs",
                json={"video_model_id": "shared-2", "callback_url": url, "events": events},
                headers=bearer(tenant["token"]),
            )
            assert response.status_code == 201, response.text
        await run_to_the_end(r, sim_clock)
        for _ in range(5):
            await deliver(r)
        down, up = await view(r, a, "shared-2"), await view(r, b, "shared-2")

    # The failing receiver's first event waits for its retry (a minute away), holding back that
    # tenant's later ones; the other tenant got every one of its callbacks, in order.
    assert [c.type for c in working.accepted] == ["job.processing", "job.completed"]
    assert failing.accepted == [] and {c.type for c in failing.attempts} == {"job.processing"}
    assert up["delivery"] == "delivered" and down["delivery"] in {"pending", "retrying"}


async def test_a_new_subscription_to_a_tracked_id_looks_like_one_to_an_unknown_id(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    sim, _ = stepped_simulator
    for vid in ("known-1", "unknown-1"):
        sim.script(vid, queue_seconds=0, process_seconds=600)
    async with start_relay(driven=True, **ENV) as r:
        first, late = await make_tenant(r, "first"), await make_tenant(r, "late")
        await track(r, first, "known-1")
        for _ in range(3):
            sim_clock.advance(0.05)
            await poll(r)
        assert (await view(r, first, "known-1"))["status"] == "processing"
        before = len(sim.requests)

        fields = ("status", "poll_count", "push_count", "last_polled_at", "transitions", "deliveries")
        known, unknown = await track(r, late, "known-1"), await track(r, late, "unknown-1")
        assert {k: known[k] for k in ("status", "poll_count", "push_count", "last_polled_at")} == {
            k: unknown[k] for k in ("status", "poll_count", "push_count", "last_polled_at")
        }
        assert (
            known["next_poll_at"] == known["created_at"] and unknown["next_poll_at"] == unknown["created_at"]
        )
        shown = {vid: await view(r, late, vid) for vid in ("known-1", "unknown-1")}
        assert {k: shown["known-1"][k] for k in fields} == {k: shown["unknown-1"][k] for k in fields}

        # Both are due at once: one step polls each id once, and each starts from its own registration.
        sim_clock.advance(0.05)
        assert await poll(r) == 2
        assert sorted(q.video_model_id for q in sim.requests[before:]) == ["known-1", "unknown-1"]
        shown = {vid: await view(r, late, vid) for vid in ("known-1", "unknown-1")}
        for job in shown.values():
            assert job["status"] == "processing" and job["poll_count"] == 1, job
            assert [(t["from"], t["to"]) for t in job["transitions"]] == [("pending", "processing")]


@pytest.mark.parametrize("how", ["cancelled", "disabled"])
async def test_the_lead_passes_on_when_the_leading_subscription_stops(
    how: str, start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    sim, _ = stepped_simulator
    sim.script("shared-3", queue_seconds=0, process_seconds=1.0)
    async with start_relay(driven=True, **ENV) as r:
        leader, other = await make_tenant(r, "leader"), await make_tenant(r, "other")
        await track(r, leader, "shared-3")
        await track(r, other, "shared-3")
        sim_clock.advance(0.05)
        assert await poll(r) == 1  # one poll for the id, both subscriptions processing
        if how == "cancelled":
            gone = await r.client.delete("/jobs/shared-3", headers=bearer(leader["token"]))
            assert gone.status_code == 204
        else:
            changed = await r.client.patch(
                f"/tenants/{leader['id']}", json={"disabled": True}, headers=AS_ADMIN
            )
            assert changed.status_code == 200
        polls_then = len(requests_for(sim, "shared-3"))
        await run_to_the_end(r, sim_clock)
        assert len(requests_for(sim, "shared-3")) > polls_then  # still polled, for the other tenant
        assert (await view(r, other, "shared-3"))["status"] == "completed"
        stopped = await r.client.get("/jobs/shared-3", params={"tenant": "leader"}, headers=AS_ADMIN)
        assert stopped.json()["status"] == ("cancelled" if how == "cancelled" else "processing")


async def test_two_subscriptions_that_both_lead_are_healed_to_one_by_their_next_poll(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    """Two replicas registering one new id at the same moment for two tenants both see no leader,
    and both new subscriptions lead: the first polls of the id leave one leading (whether their
    answers are written in one transaction or two)."""
    sim, _ = stepped_simulator
    sim.script("race-1", queue_seconds=0, process_seconds=600)
    async with start_relay(driven=True, **ENV) as r:
        first, second = await make_tenant(r, "first"), await make_tenant(r, "second")
        await track(r, first, "race-1")
        await track(r, second, "race-1")
        async with r.relay.db.write() as session:  # what the race leaves: both lead, both due
            await session.execute(
                sa.update(Job).where(col(Job.video_model_id) == "race-1").values(leads=True)
            )
        sim_clock.advance(0.05)
        assert await poll(r) == 2  # each polled once, in one batch
        for _ in range(3):
            sim_clock.advance(0.05)
            before = len(requests_for(sim, "race-1"))
            assert await poll(r) == 1
            assert len(requests_for(sim, "race-1")) == before + 1
        async with r.relay.db.read() as session:
            leads = list(
                await session.scalars(sa.select(col(Job.leads)).where(col(Job.video_model_id) == "race-1"))
            )
        assert sorted(leads) == [False, True]
        assert (
            (await view(r, second, "race-1"))["poll_count"]
            == (await view(r, first, "race-1"))["poll_count"]
            == 4
        )
