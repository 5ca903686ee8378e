"""A job goes from registered to a verified, signed callback, over real HTTP on loopback."""

from __future__ import annotations

import json

from standardwebhooks import Webhook

from app.sandbox.receiver import Receiver
from tests.support.env import WEBHOOK_SECRET
from tests.support.relay import RelayFactory, wait_job


async def test_completed_job_is_called_back_signed(
    start_relay: RelayFactory, receiver: tuple[Receiver, str]
) -> None:
    rec, hook_url = receiver
    async with start_relay() as r:
        created = await r.client.post(
            "/jobs", json={"video_model_id": "vid-ok-1", "callback_url": hook_url, "metadata": {"order": 7}}
        )
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "pending"
        job = await wait_job(r.client, "vid-ok-1", lambda j: j["delivery"] == "delivered")
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
