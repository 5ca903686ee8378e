"""Tries to break tenant isolation (SPEC §8), on SQLite and PostgreSQL. Tenant A aims every route of
the app's own route table whose path holds `{video_model_id}` at tenant B's jobs and at an id nobody
tracks (the answers must be the same 404), pages and filters `GET /jobs`, replays B's cursors, calls
every `/tenants…` route, and registers B's id as its own. B's jobs must never change nor show.

The routes found today: GET, PATCH, DELETE /jobs/{video_model_id}; POST /jobs/{video_model_id}/redeliver.
A new `{video_model_id}` route is tried here as soon as it exists: nothing is listed by hand. The
routes across jobs (GET /deliveries, POST /deliveries/redeliver, GET /stats) must show and change A's
events and counts alone; a new one fails the test until it is added there.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import fastapi.routing
import httpx
from standardwebhooks import Webhook

from app.main import create_app
from app.models import JobStatus
from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.relay import DUE_AT_ONCE, HOOK, PAST_THE_END, RelayFactory, RunningRelay, deliver, poll
from tests.support.tenants import ADMIN, AS_ADMIN, bearer, make_tenant

NOBODY = "nobody-1"  # tracked by no tenant, ever
SHARED = "shared-1"  # tracked by both
A_IDS = ["a-1", SHARED, "a-2", "a-3"]
B_ONLY = ["b-1", "b-2", "b-3", "b-4"]  # ids A does not track
B_IDS = [*B_ONLY, SHARED]
NO_TENANT = 2**31 - 1
# What a subscription owns (SPEC §8); Akool's answer (video_status, video_url…) is shared by design.
SUBSCRIPTION = (
    *("status", "poll_count", "transitions", "deliveries", "delivery", "callback_url", "metadata"),
    *("events", "push_count", "last_pushed_at", "last_polled_at", "finished_at"),
)
BODIES: dict[str, dict[str, Any]] = {
    "PATCH /jobs/{video_model_id}": {"metadata": {"owner": "A", "x": 1}},
    "POST /tenants": {"name": "intruder"},
    "PATCH /tenants/{tenant_id}": {"disabled": True},
    "POST /tenants/{tenant_id}/webhook-secret/rotate": {"grace_seconds": 0},
}


def route_table(r: RunningRelay) -> list[tuple[str, str]]:
    """(method, path template) of every route, read from an app built as the served one (never run).
    FastAPI ≥ 0.16x keeps included routers unexpanded in `app.routes`: walk them as its OpenAPI does."""
    app = create_app(r.settings)
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: list[Any] = list(walk(app.routes) if walk is not None else app.routes)
    hidden = [x for x in routes if not getattr(x, "methods", None) and "{" in (getattr(x, "path", "") or "")]
    assert not hidden, f"routes with parameters this test cannot enumerate: {hidden}"
    found = sorted((m, x.path) for x in routes if getattr(x, "methods", None) for m in x.methods)
    documented = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert documented <= set(found), f"the route table misses {documented - set(found)}"
    return found


def fill(template: str, **values: object) -> str:
    """The path with each `{param}` replaced: given values, else "1"."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: str(values.get(m.group(1), "1")), template)


def body_for(method: str, template: str) -> dict[str, Any] | None:
    return BODIES.get(f"{method} {template}", {} if method in {"POST", "PUT", "PATCH"} else None)


def answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json() if response.content else None


async def call(
    r: RunningRelay, token: str, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await r.client.request(method, path, json=body, headers=bearer(token))


async def track(r: RunningRelay, token: str, vid: str, url: str, owner: str, **extra: Any) -> None:
    body = {"video_model_id": vid, "callback_url": url, "metadata": {"owner": owner}, **extra}
    response = await call(r, token, "POST", "/jobs", body)
    assert response.status_code == 201, response.text


async def job(r: RunningRelay, token: str, vid: str) -> dict[str, Any]:
    response = await call(r, token, "GET", f"/jobs/{vid}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def jobs_of(r: RunningRelay, token: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {vid: await job(r, token, vid) for vid in ids}


async def pages(r: RunningRelay, token: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of `GET /jobs?limit=1&…`, following next_cursor to the end."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        more = {"cursor": cursor} if cursor else {}
        response = await r.client.get("/jobs", params={**params, "limit": 1, **more}, headers=bearer(token))
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert len(items) <= len(A_IDS) + len(B_IDS), f"paging does not end: {items}"


async def deliver_all(r: RunningRelay) -> None:
    for _ in range(6):
        if not await deliver(r):
            return


async def admin_view(r: RunningRelay, *tenants: dict[str, Any]) -> list[Any]:
    """What operators see of tenants and tokens (less `last_used_at`, which using a token changes)."""
    view: list[Any] = [(await r.client.get("/tenants", headers=AS_ADMIN)).json()]
    for t in tenants:
        tokens = (await r.client.get(f"/tenants/{t['id']}/tokens", headers=AS_ADMIN)).json()
        view.append([{k: v for k, v in token.items() if k != "last_used_at"} for token in tokens])
    return view


async def test_tenant_a_cannot_see_or_touch_tenant_bs_jobs(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    rec = Receiver()  # accepts everything; signatures are checked by the test
    async with (
        serve_in_background(rec.app) as base,
        start_relay(driven=True, RELAY_ADMIN_TOKENS=ADMIN, **DUE_AT_ONCE) as r,
    ):
        a, b = await make_tenant(r, "tenant-a"), await make_tenant(r, "tenant-b")
        ta, tb, url_a, url_b = a["token"], b["token"], rec.url(base, "a"), rec.url(base, "b")
        # Completed with delivered callbacks: a-1, shared-1 (both tenants), b-1 (two events).
        await track(r, ta, "a-1", url_a, "A")
        await track(r, ta, SHARED, url_a, "A")
        await track(r, tb, "b-1", url_b, "B", events=["queueing", "completed"])
        await track(r, tb, SHARED, url_b, "B")
        await poll(r)
        sim_clock.advance(PAST_THE_END)
        await poll(r)
        await deliver_all(r)
        for token, vid in [(ta, "a-2"), (tb, "b-2")]:  # cancelled
            await track(r, token, vid, HOOK, "A" if token == ta else "B")
            assert (await call(r, token, "DELETE", f"/jobs/{vid}")).status_code == 204
        for token, vid in [(ta, "a-3"), (tb, "b-3"), (tb, "b-4")]:  # pending
            await track(r, token, vid, HOOK, "A" if token == ta else "B")
        before = await jobs_of(r, tb, B_IDS)
        assert before["b-1"]["status"] == "completed" and before["b-1"]["delivery"] == "delivered"
        assert [d["state"] for d in before["b-1"]["deliveries"]] == ["delivered", "delivered"]
        routes = route_table(r)

        # 1. Every {video_model_id} route, as A: B's ids answer exactly as an id nobody tracks.
        by_id = [(m, p) for m, p in routes if "{video_model_id}" in p]
        assert by_id, f"no {{video_model_id}} route in {routes}"
        for method, template in by_id:
            body = body_for(method, template)
            nobodys = await call(r, ta, method, fill(template, video_model_id=NOBODY), body)
            assert nobodys.status_code == 404 and "detail" in nobodys.json(), (method, template)
            for vid in B_ONLY:
                theirs = await call(r, ta, method, fill(template, video_model_id=vid), body)
                assert answer(theirs) == answer(nobodys), (method, template, vid, answer(theirs))
            # The route does reach A's own subscription (a 404 above is not the route failing).
            mine = await call(r, ta, method, fill(template, video_model_id=SHARED), body)
            assert mine.status_code != 404, (method, template, answer(mine))
        sent = len(rec.accepted)
        await deliver_all(r)  # what A's calls queued (A's own redelivery of shared-1), nothing of B's
        a_hooks = {d["webhook_id"] for j in (await jobs_of(r, ta, A_IDS)).values() for d in j["deliveries"]}
        assert {c.webhook_id for c in rec.accepted[sent:]} <= a_hooks
        assert await jobs_of(r, tb, B_IDS) == before, "A's calls changed B's jobs"
        assert (await r.client.get(f"/jobs/{NOBODY}", headers=AS_ADMIN)).status_code == 404

        # 2. GET /jobs as A: A's jobs alone, whatever the filter and however paged.
        first = await r.client.get("/jobs", params={"limit": 500}, headers=bearer(ta))
        mine_all = first.json()["items"]
        assert sorted(j["video_model_id"] for j in mine_all) == sorted(A_IDS)
        assert all(j["metadata"]["owner"] == "A" and j["callback_url"] != url_b for j in mine_all)
        for status in [None, *JobStatus]:
            got = await pages(r, ta, **({"status": status.value} if status else {}))
            expected = [j["video_model_id"] for j in mine_all if status in (None, j["status"])]
            assert [j["video_model_id"] for j in got] == expected, status
            assert all(j["metadata"]["owner"] == "A" for j in got), (status, got)
        summary = first.json()["summary"]
        by_status = Counter(j["status"] for j in mine_all)
        assert summary["jobs"] == {s.value: by_status[s.value] for s in JobStatus}
        details = await jobs_of(r, ta, A_IDS)
        states = Counter(d["state"] for j in details.values() for d in j["deliveries"])
        assert {k: n for k, n in summary["deliveries"].items() if n} == dict(states)
        # A cursor is bound to whom it was issued: neither tenant pages with the other's.
        for owner, other in [(tb, ta), (ta, tb)]:
            cursor = (await r.client.get("/jobs?limit=1", headers=bearer(owner))).json()["next_cursor"]
            assert cursor is not None
            replayed = await r.client.get(
                "/jobs", params={"limit": 1, "cursor": cursor}, headers=bearer(other)
            )
            assert replayed.status_code == 422, replayed.text

        # 3. Every /tenants… route, as A: a route that does not exist (A may rotate its own secret).
        tenants_before = await admin_view(r, a, b)
        by_tenant = [(m, p) for m, p in routes if p.startswith("/tenants")]
        assert by_tenant, f"no /tenants route in {routes}"
        for method, template in by_tenant:
            nowhere = answer(await call(r, ta, method, "/no-such-route", body_for(method, template)))
            assert nowhere[0] == 404
            for target, token_id in [(a, a["token_id"]), (b, b["token_id"]), ({"id": NO_TENANT}, "x")]:
                if target is a and template.endswith("/webhook-secret/rotate"):
                    continue
                path = fill(template, tenant_id=target["id"], token_id=token_id)
                refused = await call(r, ta, method, path, body_for(method, template))
                assert answer(refused) == nowhere, (method, path, answer(refused))
        assert await admin_view(r, a, b) == tenants_before, "A's calls changed tenants or tokens"
        assert len((await call(r, tb, "GET", "/jobs")).json()["items"]) == len(B_IDS)

        # 4. A tracking B's id: a new subscription, the same as a never-seen id registered with it.
        made = await asyncio.gather(
            *(
                call(
                    r,
                    ta,
                    "POST",
                    "/jobs",
                    {"video_model_id": v, "callback_url": url_a, "metadata": {"owner": "A"}},
                )
                for v in ("b-1", "fresh-1")
            )
        )
        assert [m.status_code for m in made] == [201, 201], [m.text for m in made]
        theirs_for_a, fresh = await job(r, ta, "b-1"), await job(r, ta, "fresh-1")
        assert theirs_for_a["status"] == "pending" and theirs_for_a["poll_count"] == 0
        assert theirs_for_a["transitions"] == [] and theirs_for_a["deliveries"] == []
        assert {k: theirs_for_a[k] for k in SUBSCRIPTION} == {k: fresh[k] for k in SUBSCRIPTION}
        b_hooks = [d["webhook_id"] for j in before.values() for d in j["deliveries"]]
        listed = await r.client.get("/jobs", params={"limit": 500}, headers=bearer(ta))
        for seen in (made[0].text, (await call(r, ta, "GET", "/jobs/b-1")).text, listed.text):
            assert url_b not in seen and '"owner":"B"' not in seen
            assert not [w for w in b_hooks if w in seen], seen
        assert await jobs_of(r, tb, B_IDS) == before, "A's subscription changed B's"

        # 5. The routes across jobs (/deliveries…, /stats), as A: A's events and counts alone.
        across = [(m, p) for m, p in routes if p.startswith(("/deliveries", "/stats"))]
        assert sorted(across) == [
            ("GET", "/deliveries"),
            ("GET", "/stats"),
            ("POST", "/deliveries/redeliver"),
        ]
        a_now = await jobs_of(r, ta, A_IDS)
        a_events = {d["webhook_id"]: d for j in a_now.values() for d in j["deliveries"]}
        listed = (await call(r, ta, "GET", "/deliveries?limit=500")).json()["items"]
        assert sorted(d["webhook_id"] for d in listed) == sorted(a_events)
        assert not [w for w in b_hooks if w in str(listed)] and all("tenant" not in d for d in listed)
        buckets = (await call(r, ta, "GET", "/stats?minutes=10")).json()["buckets"]
        delivered = sum(1 for d in a_events.values() if d["state"] == "delivered")
        assert sum(b["delivered"] for b in buckets) == delivered
        finished = Counter(j["status"] for j in a_now.values() if j["finished_at"])
        assert sum((Counter(b["finished"]) for b in buckets), Counter()) == finished
        assert all("akool_requests" not in b for b in buckets)
        for state in ("delivered", "dead", "pending"):
            dry = await call(r, ta, "POST", "/deliveries/redeliver", {"state": state, "dry_run": True})
            assert dry.json() == {"count": sum(1 for d in a_events.values() if d["state"] == state)}
        refused = await call(r, ta, "POST", "/deliveries/redeliver", {"tenant": "tenant-b"})
        assert refused.status_code == 422
        sent = len(rec.accepted)
        redone = await call(r, ta, "POST", "/deliveries/redeliver", {"state": "delivered"})
        assert redone.status_code == 202 and redone.json() == {"count": delivered}
        await deliver_all(r)
        assert {c.webhook_id for c in rec.accepted[sent:]} <= set(a_events)
        assert await jobs_of(r, tb, B_IDS) == before, "A's bulk redelivery changed B's jobs"

        # B's secret was not rotated: B's redelivered callback carries B's one secret's signature.
        assert (await call(r, tb, "POST", "/jobs/b-1/redeliver")).status_code == 202
        await asyncio.sleep(1.1)  # the sender keeps a tenant's secrets for up to a second
        sent = len(rec.accepted)
        await deliver_all(r)
        [callback] = rec.accepted[sent:]
        Webhook(b["webhook_secret"]).verify(callback.raw, callback.headers)
        assert callback.headers["webhook-signature"].count("v1,") == 1
        tried = sorted({*by_id, *by_tenant, *across})
        print(f"\nroutes tried as another tenant ({len(tried)}): " + ", ".join(f"{m} {p}" for m, p in tried))
