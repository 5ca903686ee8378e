"""The loops driven one step at a time against the real databases: no tick, no wall-clock wait."""

from __future__ import annotations

from app.sandbox.receiver import Receiver
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.relay import DUE_AT_ONCE, RelayFactory, register, step


async def test_a_job_moves_one_poll_at_a_time_and_its_callback_goes_on_the_next_delivery(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    async with start_relay(driven=True, **DUE_AT_ONCE) as r:
        await register(r, "vid-step-1", hook_url, events=["queueing", "processing", "completed"])
        assert await r.relay.poll_due_jobs() == 1
        job = (await r.client.get("/jobs/vid-step-1")).json()
        assert job["status"] == "queueing" and job["delivery"] == "pending"
        assert rec.accepted == []  # nothing is sent until the outbox is stepped
        assert await r.relay.deliver_due() == 1
        assert [e.type for e in rec.accepted] == ["job.queueing"]

        sim_clock.advance(0.3)  # into processing
        await step(r)
        sim_clock.advance(1)  # past the end
        await step(r)
        job = (await r.client.get("/jobs/vid-step-1")).json()
        assert job["status"] == "completed" and job["delivery"] == "delivered"
        assert [e.type for e in rec.accepted] == ["job.queueing", "job.processing", "job.completed"]
        assert await r.relay.poll_due_jobs() == 0  # terminal: never polled again
