"""GET /jobs' search (SPEC §3): `q` (an id or its prefix) and `since`/`until` (registration time), with
paging and a tenant's scope, on SQLite and PostgreSQL; the summary ignores them. The attempt's
response excerpt in GET /jobs/{id}."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.relay import DUE_AT_ONCE, PAST_THE_END, RelayFactory, RunningRelay, deliver, poll, register
from tests.support.tenants import ADMIN, AS_ADMIN

IDS = ["unknown-abc-1", "unknown-abc-2", "unknown-abd-1", "unknown-ab", "unknown-b"]


async def found(r: RunningRelay, headers: dict[str, str] | None = None, **params: Any) -> list[str]:
    """The ids of every page of GET /jobs with `params`, one per page."""
    ids: list[str] = []
    cursor = None
    while True:
        more: dict[str, str] = {"cursor": cursor} if cursor else {}
        response = await r.client.get("/jobs", params={**params, "limit": 1, **more}, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [j["video_model_id"] for j in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            return ids
        assert len(ids) < 50


async def test_search_by_prefix_and_registration_time(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True, RELAY_ADMIN_TOKENS=ADMIN) as r:
        r.client.headers.update(AS_ADMIN)
        made = {}
        for vid in IDS:
            made[vid] = (await register(r, vid))["created_at"]
            await asyncio.sleep(0.002)  # distinct registration times
        other = await r.client.post("/tenants", json={"name": "other"})
        token = {"authorization": f"Bearer {other.json()['token']}"}
        body = {"video_model_id": "unknown-abc-9", "callback_url": "http://127.0.0.1:9/hook"}
        assert (await r.client.post("/jobs", json=body, headers=token)).status_code == 201

        newest_first = list(reversed(IDS))
        assert await found(r, tenant="default", q="unknown-abc") == ["unknown-abc-2", "unknown-abc-1"]
        assert await found(r, tenant="default", q="unknown-ab") == [v for v in newest_first if "-ab" in v]
        assert await found(r, tenant="default", q="unknown-abc-1") == ["unknown-abc-1"]
        assert await found(r, q="unknown-abc") == ["unknown-abc-9", "unknown-abc-2", "unknown-abc-1"]
        assert await found(r, tenant="default", q="unknown-abz") == []
        assert await found(r, tenant="default", q="zzz") == []
        assert await found(r, token, q="unknown-ab") == ["unknown-abc-9"]  # its own only
        assert await found(r, tenant="default", q="unknown-abc", status="pending") == [
            "unknown-abc-2",
            "unknown-abc-1",
        ]
        assert await found(r, tenant="default", q="unknown-abc", status="completed") == []

        # since (at or after) / until (before), on created_at; with a time zone or without (UTC).
        third = made["unknown-abd-1"]
        assert await found(r, tenant="default", since=third) == ["unknown-b", "unknown-ab", "unknown-abd-1"]
        assert await found(r, tenant="default", until=third) == ["unknown-abc-2", "unknown-abc-1"]
        naive = datetime.fromisoformat(third.replace("Z", "+00:00")).astimezone(UTC).replace(tzinfo=None)
        assert await found(r, tenant="default", until=naive.isoformat()) == ["unknown-abc-2", "unknown-abc-1"]
        assert await found(r, tenant="default", q="unknown-ab", since=third, until=made["unknown-b"]) == [
            "unknown-ab",
            "unknown-abd-1",
        ]

        # The summary covers the scope whatever the filters.
        full = (await r.client.get("/jobs", params={"tenant": "default"})).json()["summary"]
        narrow = (await r.client.get("/jobs", params={"tenant": "default", "q": "zzz"})).json()
        assert narrow["items"] == [] and narrow["summary"]["jobs"] == full["jobs"]
        assert full["jobs"]["pending"] == len(IDS)
        assert set(full["upstream"]["budget"]) == {"rate", "spent_per_second"}

        for params in ({"q": "bad id"}, {"q": ""}, {"q": "x" * 65}, {"since": "yesterday"}):
            assert (await r.client.get("/jobs", params=params)).status_code == 422, params


async def test_attempts_show_the_response_excerpt(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook = receiver
    rec.behaviour = Behaviour(fail_first=1, fail_status=503, body=("é" * 700).encode())
    async with start_relay(driven=True, **DUE_AT_ONCE, RELAY_RETRY_SCHEDULE="0.001") as r:
        await register(r, "excerpt-1", hook)
        await poll(r)
        sim_clock.advance(PAST_THE_END)
        await poll(r)
        await deliver(r)
        await deliver(r)
        job = (await r.client.get("/jobs/excerpt-1")).json()
    [attempt_1, attempt_2] = job["deliveries"][0]["attempts"]
    assert attempt_1["status_code"] == 503 and attempt_2["status_code"] == 200
    for a in (attempt_1, attempt_2):
        excerpt = a["response_excerpt"]
        assert excerpt.startswith("éé") and len(excerpt.encode()) <= 1024 + 3  # 1 KiB, a cut character
