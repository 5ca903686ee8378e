"""A job goes from registered to a verified, signed callback, over real HTTP on loopback.

The relay's loops are driven one step at a time; the simulated job moves on a manual clock.
"""

from __future__ import annotations

import json

from standardwebhooks import Webhook

from app.sandbox.receiver import Receiver
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.env import WEBHOOK_SECRET
from tests.support.relay import DUE_AT_ONCE, RelayFactory, deliver, poll


async def test_completed_job_is_called_back_signed(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    async with start_relay(driven=True, **DUE_AT_ONCE) as r:
        created = await r.client.post(
            "/jobs", json={"video_model_id": "vid-ok-1", "callback_url": hook_url, "metadata": {"order": 7}}
        )
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "pending"
        assert await poll(r) == 1  # queueing: not an event this job asked for
        assert await deliver(r) == 0
        sim_clock.advance(1)  # past queueing (0.2 s) and processing (0.4 s)
        assert await poll(r) == 1
        assert await deliver(r) == 1
        job = (await r.client.get("/jobs/vid-ok-1")).json()
    [callback] = rec.accepted
    assert callback.verified
    Webhook(WEBHOOK_SECRET).verify(json.dumps(callback.body, separators=(",", ":")), callback.headers)
    assert callback.type == "job.completed"
    data = callback.body["data"]
    assert data["video_model_id"] == "vid-ok-1"
    assert data["status"] == "completed"
    assert data["video_url"] == "https://sim.akool.local/videos/vid-ok-1.mp4"
    assert data["metadata"] == {"order": 7}
    assert data["upstream"]["video_status"] == 3
    assert data["audio_splits"]["translated_srt_url"]
    assert callback.headers["user-agent"].startswith("akool-relay/")
    assert job["status"] == "completed"
    assert job["delivery"] == "delivered"
    assert [(t["from"], t["to"]) for t in job["transitions"]][-1][1] == "completed"
    assert job["deliveries"][0]["webhook_id"] == callback.webhook_id
    assert job["deliveries"][0]["attempts"][0]["status_code"] == 200
