"""GET /deliveries and POST /deliveries/redeliver (SPEC §3), over real HTTP on SQLite and PostgreSQL.

Callbacks go dead against a receiver that answers 500 (two attempts: RELAY_RETRY_SCHEDULE has one
retry), then the receiver is mended and the dead ones are sent again in bulk: a dry run sends nothing,
each event keeps its webhook-id, a job's events arrive in their order, and a tenant reaches its own
events only. The large case writes 10,000 dead events straight into the database (the relay's own
rows, as benchmarks/data.py does) and checks the batches and that a fresh callback goes first.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from app.db import Database
from app.models import DEFAULT_TENANT_ID, Event, Job
from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import ManualClock, Simulator
from app.schemas import JobCreate
from app.store import deliveries
from app.store.deliveries import DeliveryFilter
from app.store.jobs import EVERYONE, new_job_row
from tests.support.relay import (
    DUE_AT_ONCE,
    PAST_THE_END,
    RelayFactory,
    RunningRelay,
    deliver,
    drain,
    poll,
    register,
)
from tests.support.tenants import ADMIN, AS_ADMIN, bearer, make_tenant

SETTINGS: dict[str, Any] = {**DUE_AT_ONCE, "RELAY_ADMIN_TOKENS": ADMIN, "RELAY_RETRY_SCHEDULE": "0.001"}
STEPS = ["queueing", "processing", "completed"]


async def listed(r: RunningRelay, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """Every item of GET /deliveries with `params`, one per page, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        more: dict[str, str] = {"cursor": cursor} if cursor else {}
        response = await r.client.get("/deliveries", params={**params, "limit": 1, **more}, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        if (cursor := page["next_cursor"]) is None:
            return items
        assert len(items) < 100, "paging does not end"


async def redeliver(r: RunningRelay, headers: dict[str, str], **body: Any) -> tuple[int, int]:
    response = await r.client.post("/deliveries/redeliver", json=body, headers=headers)
    assert response.status_code in (200, 202), response.text
    return response.status_code, response.json()["count"]


async def test_dead_callbacks_listed_and_sent_again_in_order_per_tenant(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    rec = Receiver(behaviour=Behaviour(status=500, body=b"down for maintenance"))
    async with serve_in_background(rec.app) as base, start_relay(driven=True, **SETTINGS) as r:
        ta, tb = (await make_tenant(r, "bulk-a"))["token"], (await make_tenant(r, "bulk-b"))["token"]
        for token, vid in [(ta, "a-1"), (ta, "a-2"), (tb, "b-1")]:
            body = {"video_model_id": vid, "callback_url": rec.url(base, vid), "events": STEPS}
            assert (await r.client.post("/jobs", json=body, headers=bearer(token))).status_code == 201
        await poll(r)  # queueing
        sim_clock.advance(0.3)
        await poll(r)  # processing
        sim_clock.advance(PAST_THE_END)
        await poll(r)  # completed
        await drain(r)
        a_dead = await listed(r, bearer(ta), state="dead")
        assert len(a_dead) == 6 and all(d["state"] == "dead" and d["attempts"] == 2 for d in a_dead)
        assert {d["video_model_id"] for d in a_dead} == {"a-1", "a-2"}  # never B's
        assert all("tenant" not in d for d in a_dead)
        last = a_dead[0]["last_attempt"]
        assert last["status_code"] == 500 and last["response_excerpt"] == "down for maintenance"
        assert [d["created_at"] for d in a_dead] == sorted((d["created_at"] for d in a_dead), reverse=True)
        everyone = await listed(r, AS_ADMIN)
        assert len(everyone) == 9 and {d["tenant"] for d in everyone} == {"bulk-a", "bulk-b"}
        assert [d["webhook_id"] for d in await listed(r, AS_ADMIN, tenant="bulk-a")] == [
            d["webhook_id"] for d in a_dead
        ]
        assert await listed(r, bearer(ta), state="delivered") == []
        assert len(await listed(r, bearer(ta), state=["pending", "dead"])) == 6
        # since/until: of the event; a cursor of GET /jobs is not one of GET /deliveries.
        middle = sorted(d["created_at"] for d in a_dead)[3]  # events of one poll share a time
        later = sum(d["created_at"] >= middle for d in a_dead)
        assert 0 < later < 6
        assert len(await listed(r, bearer(ta), since=middle)) == later
        assert len(await listed(r, bearer(ta), until=middle)) == 6 - later
        job_cursor = (await r.client.get("/jobs?limit=1", headers=bearer(ta))).json()["next_cursor"]
        refused = await r.client.get("/deliveries", params={"cursor": job_cursor}, headers=bearer(ta))
        assert refused.status_code == 422
        b_cursor = (await r.client.get("/deliveries?limit=1", headers=bearer(tb))).json()["next_cursor"]
        replayed = await r.client.get("/deliveries", params={"cursor": b_cursor}, headers=bearer(ta))
        assert replayed.status_code == 422

        # A dry run: the count, and nothing changes or is sent.
        assert await redeliver(r, bearer(ta), dry_run=True) == (200, 6)
        assert await redeliver(r, AS_ADMIN, dry_run=True) == (200, 9)
        assert await redeliver(r, AS_ADMIN, dry_run=True, tenant="bulk-b") == (200, 3)
        sent = len(rec.attempts)
        assert await drain(r) == 0 and len(rec.attempts) == sent
        assert len(await listed(r, bearer(ta), state="dead")) == 6

        # A tenant may not name a tenant; an unknown state or field is refused.
        bodies: list[dict[str, Any]] = [
            {"tenant": "bulk-b"},
            {"state": "gone"},
            {"states": ["dead"]},
            {"state": []},
        ]
        for body in bodies:
            response = await r.client.post("/deliveries/redeliver", json=body, headers=bearer(ta))
            assert response.status_code == 422, (body, response.text)

        # A's redelivery: A's six events alone, same webhook-ids, in order per job.
        rec.behaviour = Behaviour(status=200)
        assert await redeliver(r, bearer(ta)) == (202, 6)
        a1 = (await r.client.get("/jobs/a-1", headers=bearer(ta))).json()
        assert a1["delivery"] == "pending"
        assert [d["state"] for d in a1["deliveries"]] == ["pending"] * 3
        await drain(r)
        got = [(c.webhook_id, c.type) for c in rec.accepted]
        assert sorted(w for w, _ in got) == sorted(d["webhook_id"] for d in a_dead)
        for vid in ("a-1", "a-2"):
            job = (await r.client.get(f"/jobs/{vid}", headers=bearer(ta))).json()
            ids = [d["webhook_id"] for d in job["deliveries"]]
            assert [w for w, _ in got if w in ids] == ids, "a job's callbacks out of order"
            assert job["delivery"] == "delivered"
            assert [a["response_excerpt"] for a in job["deliveries"][0]["attempts"]] == [
                "down for maintenance",
                "down for maintenance",
                "ok",
            ]
        b_dead = await listed(r, bearer(tb), state="dead")
        assert len(b_dead) == 3, "A's redelivery touched B's events"

        # The operator, for B; then nothing dead is left.
        assert await redeliver(r, AS_ADMIN, tenant="bulk-b") == (202, 3)
        await drain(r)
        assert await redeliver(r, AS_ADMIN, dry_run=True) == (200, 0)
        assert len(rec.unique()) == 9


async def insert_dead(url: str, jobs: int, events_per_job: int) -> None:
    """`jobs` completed jobs with `events_per_job` dead events each, straight into the database."""
    from app.config import load_settings

    settings = load_settings(DATABASE_URL=url)
    db = Database(url)
    now = datetime.now(UTC) - timedelta(hours=1)
    try:
        rows = []
        for i in range(jobs):
            spec = JobCreate.model_construct(
                video_model_id=f"dead-{i}", callback_url="http://127.0.0.1:9/hook", metadata={}, events=STEPS
            )
            row = new_job_row(spec, DEFAULT_TENANT_ID, now, settings)
            row.update(status="completed", next_poll_at=None, claim_at=None, finished_at=now, delivery="dead")
            rows.append(row)
        async with db.write() as session:
            await session.execute(sa.insert(Job.metadata.tables["job"]), rows)
            ids = list(await session.scalars(sa.select(col(Job.id)).order_by(col(Job.id))))
            events = [
                {
                    "webhook_id": f"msg_dead_{job_id}_{k}",
                    "job_id": job_id,
                    "tenant_id": DEFAULT_TENANT_ID,
                    "type": f"job.{STEPS[k]}",
                    "body": "{}",
                    "state": "dead",
                    "attempts": 8,
                    "created_at": now + timedelta(seconds=k),
                }
                for job_id in ids
                for k in range(events_per_job)
            ]
            await session.execute(sa.insert(Event.metadata.tables["event"]), events)
    finally:
        await db.dispose()


async def test_ten_thousand_dead_events_go_in_batches_after_live_callbacks(
    start_relay: RelayFactory,
    db_url: str,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    await insert_dead(db_url, 5000, 2)
    rec, hook = receiver
    async with start_relay(driven=True, **SETTINGS) as r:
        r.client.headers.update(AS_ADMIN)
        assert await redeliver(r, AS_ADMIN, dry_run=True) == (200, 10_000)
        batches: list[int] = []
        count = await deliveries.redeliver(
            r.relay.db, EVERYONE, DeliveryFilter(), batch=500, after_batch=lambda: batches.append(1)
        )
        assert count == 10_000 and len(batches) == 20
        assert await redeliver(r, AS_ADMIN, dry_run=True) == (200, 0)
        pending = await r.client.get(
            "/deliveries", params={"state": "pending", "limit": 500}, headers=AS_ADMIN
        )
        assert len(pending.json()["items"]) == 500
        summary = (await r.client.get("/jobs", headers=AS_ADMIN)).json()["summary"]
        assert summary["deliveries"]["pending"] == 10_000 and summary["deliveries"]["dead"] == 0

        # A fresh callback, due after the 10,000: the first delivery step sends it, and bulk events
        # leave a quarter of the slots free for live ones.
        await register(r, "live-1", hook)
        await poll(r)
        sim_clock.advance(PAST_THE_END)
        await poll(r)
        sent = await deliver(r)
        capacity = r.settings.poll_concurrency
        assert sent == capacity - capacity // 4  # the live one, and bulk ones up to the reserve
        assert [c.body["data"]["video_model_id"] for c in rec.accepted] == ["live-1"]
        # The bulk ones reached their (unreachable) hook, first events of each job first.
        jobs = await r.client.get("/deliveries", params={"state": "retrying", "limit": 500}, headers=AS_ADMIN)
        retried = jobs.json()["items"]
        assert len(retried) == sent - 1
        assert all(d["type"] == "job.queueing" for d in retried), "a job's second event went before its first"
