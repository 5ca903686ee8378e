"""The named log sites carry their fields (issue 14): every line about a job has `video_model_id`,
every line about a delivery has `webhook_id`, in the JSON format too."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from app.logs import JsonFormatter
from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.relay import DUE_AT_ONCE, RelayFactory, register, step

QUICK = {**DUE_AT_ONCE, "RELAY_RETRY_SCHEDULE": "0.001"}


def lines(caplog: pytest.LogCaptureFixture, contains: str) -> list[dict[str, object]]:
    """The captured records whose message contains `contains`, as the JSON formatter writes them."""
    formatter = JsonFormatter()
    found = [json.loads(formatter.format(r)) for r in caplog.records if contains in r.getMessage()]
    assert found, f"no log line contains {contains!r}: {[r.getMessage() for r in caplog.records]}"
    return found


async def test_poll_state_change_attempt_dead_pause_and_resume_lines_carry_their_ids(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim, _ = stepped_simulator
    rec, hook_url = receiver
    rec.behaviour = Behaviour(status=500)  # every attempt fails: the second one makes it dead
    caplog.set_level(logging.DEBUG, logger="app")
    async with start_relay(driven=True, **QUICK) as r:
        await register(r, "vid-logs-1", hook_url, events=["queueing"])
        await step(r)  # polled: pending → queueing, first attempt fails
        await asyncio.sleep(0.01)
        await r.relay.deliver_due()  # second attempt: dead
        sim.auth_failing = True
        sim_clock.advance(0.01)
        await asyncio.sleep(0.01)
        await r.relay.poll_due_jobs()  # refused: paused
        sim.auth_failing = False
        await asyncio.sleep(0.01)
        await r.relay.poll_due_jobs()  # the probe is accepted: resumed

    job = {"video_model_id": "vid-logs-1"}
    for site in (
        "poll of vid-logs-1",
        "job vid-logs-1: pending → queueing",
        "polling paused",
        "polling resumed",
    ):
        for line in lines(caplog, site):
            assert line.items() >= job.items(), line
            assert {"time", "level", "logger", "message"} <= line.keys()
    [first, dead] = lines(caplog, "callback msg_")
    assert "attempt 1: failed (500)" in str(first["message"]) and "is dead after attempt 2" in str(
        dead["message"]
    )
    for line in (first, dead):
        assert str(line["webhook_id"]).startswith("msg_") and line["video_model_id"] == "vid-logs-1"
    assert first["webhook_id"] == dead["webhook_id"]
