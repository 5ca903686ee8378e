"""The HTTP API of SPEC §3 over real HTTP, on SQLite and PostgreSQL: the dashboard (GET /jobs),
bearer-token auth, and health, metrics and OpenAPI.

Most relays here are driven (`driven=True`): nothing polls or delivers unless the test steps it with
`poll()` / `deliver()` below, and simulated jobs move only on `sim_clock` (queueing 0.2 s, then
processing 0.4 s). The tests that read /readyz keep a running relay: a driven one is not ready (its
pollers are not running). Ids starting with `unknown` never exist at the simulator, so those jobs stay
`pending` (the not-found grace is the default 60 s).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from app.sandbox.receiver import Receiver
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.api import DELIVERY_STATES, JOB_FIELDS, STATUSES, assert_field_error, is_utc
from tests.support.relay import (
    DUE_AT_ONCE,
    HOOK,
    PAST_THE_END,
    RelayFactory,
    deliver,
    poll,
    register,
)

# -- GET /jobs ---------------------------------------------------------------------------------------


async def test_list_is_newest_first_and_pages_with_a_cursor(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
        ids = [f"unknown-page-{i}" for i in range(7)]
        for vid in ids:
            await register(r, vid)
        everything = (await r.client.get("/jobs")).json()
        assert [j["video_model_id"] for j in everything["items"]] == ids[::-1]
        assert everything["next_cursor"] is None
        for j in everything["items"]:
            assert set(j) >= JOB_FIELDS

        seen: list[str] = []
        pages = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor is not None:
                params["cursor"] = cursor
            resp = await r.client.get("/jobs", params=params)
            assert resp.status_code == 200, resp.text
            page = resp.json()
            pages.append(len(page["items"]))
            seen += [j["video_model_id"] for j in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert len(pages) < 10, "the cursor never ends"
        assert pages == [3, 3, 1]
        assert seen == ids[::-1]  # every job exactly once, newest first

        # A cursor walk is stable while new jobs arrive: they are newer, so not on later pages.
        first = (await r.client.get("/jobs", params={"limit": 3})).json()
        await register(r, "unknown-page-late")
        second = (await r.client.get("/jobs", params={"limit": 3, "cursor": first["next_cursor"]})).json()
        assert [j["video_model_id"] for j in second["items"]] == ids[::-1][3:6]


async def test_list_filters_by_status(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    _rec, hook_url = receiver
    async with start_relay(driven=True, **DUE_AT_ONCE) as r:
        await register(r, "unknown-f1")
        await register(r, "vid-f2", hook_url)
        await register(r, "unknown-f3")
        await register(r, "vid-f4", hook_url)
        await register(r, "unknown-f5")
        await r.client.delete("/jobs/unknown-f5")
        assert await poll(r) == 4  # the vid- ones start queueing, the unknown ones stay pending
        sim_clock.advance(PAST_THE_END)
        assert await poll(r) == 4
        assert await deliver(r) == 2
        for vid in ("vid-f2", "vid-f4"):
            assert (await r.client.get(f"/jobs/{vid}")).json()["status"] == "completed"

        def ids(resp: httpx.Response) -> list[str]:
            assert resp.status_code == 200, resp.text
            return [j["video_model_id"] for j in resp.json()["items"]]

        assert ids(await r.client.get("/jobs?status=pending")) == ["unknown-f3", "unknown-f1"]
        assert ids(await r.client.get("/jobs?status=completed")) == ["vid-f4", "vid-f2"]
        assert ids(await r.client.get("/jobs?status=cancelled")) == ["unknown-f5"]
        assert ids(await r.client.get("/jobs?status=pending&status=completed")) == [
            "vid-f4",
            "unknown-f3",
            "vid-f2",
            "unknown-f1",
        ]
        assert ids(await r.client.get("/jobs?status=failed")) == []
        paged = (await r.client.get("/jobs?status=pending&status=completed&limit=3")).json()
        rest = await r.client.get(
            f"/jobs?status=pending&status=completed&limit=3&cursor={paged['next_cursor']}"
        )
        assert ids(rest) == ["unknown-f1"]

        summary = (await r.client.get("/jobs?status=failed")).json()["summary"]
        assert summary["jobs"]["pending"] == 2  # the summary is of everything, not of the filter
        assert summary["jobs"]["completed"] == 2
        assert summary["jobs"]["cancelled"] == 1


async def test_list_rejects_bad_queries(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
        assert_field_error(await r.client.get("/jobs?status=done"), "status")
        assert_field_error(await r.client.get("/jobs?status=pending&status=bogus"), "status")
        for limit in ["0", "501", "-1", "ten", "1.5"]:
            assert_field_error(await r.client.get("/jobs", params={"limit": limit}), "limit")
        for cursor in ["garbage", "aWQ6eA", "aWQ6", "aWQ6LTE", "!!!", "x" * 300, "%00"]:
            resp = await r.client.get("/jobs", params={"cursor": cursor})
            assert_field_error(resp, "cursor")
        for limit in ["1", "500"]:
            assert (await r.client.get("/jobs", params={"limit": limit})).status_code == 200


async def test_list_summary(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    _rec, hook_url = receiver
    async with start_relay(driven=True, **DUE_AT_ONCE) as r:
        empty = (await r.client.get("/jobs")).json()
        assert set(empty) == {"summary", "items", "next_cursor"}
        summary = empty["summary"]
        assert set(summary) >= {"jobs", "deliveries", "oldest_unfinished_age_seconds", "upstream"}
        assert set(summary["jobs"]) == STATUSES
        assert all(v == 0 for v in summary["jobs"].values())
        assert set(summary["deliveries"]) == DELIVERY_STATES
        assert summary["oldest_unfinished_age_seconds"] is None
        assert set(summary["upstream"]) >= {"state", "reason", "last_success_at", "consecutive_errors"}

        await register(r, "unknown-s1")
        await register(r, "vid-s2", hook_url)
        assert await poll(r) == 2
        sim_clock.advance(PAST_THE_END)
        assert await poll(r) == 2
        assert await deliver(r) == 1
        assert (await r.client.get("/jobs/vid-s2")).json()["delivery"] == "delivered"
        await asyncio.sleep(0.2)  # the age is of the wall clock: the oldest unfinished job is 0.2 s old
        summary = (await r.client.get("/jobs")).json()["summary"]
        assert summary["jobs"] == {**dict.fromkeys(STATUSES, 0), "pending": 1, "completed": 1}
        assert summary["deliveries"] == {**dict.fromkeys(DELIVERY_STATES, 0), "delivered": 1}
        age = summary["oldest_unfinished_age_seconds"]
        assert isinstance(age, int | float) and 0.2 <= age < 60
        upstream = summary["upstream"]
        assert upstream["state"] == "ok"
        assert upstream["consecutive_errors"] == 0
        assert upstream["last_success_at"] is not None and is_utc(upstream["last_success_at"])


# -- auth --------------------------------------------------------------------------------------------

TOKEN_1 = "t1-relay-token-AAAAAAAAAAAA"
TOKEN_2 = "t2-relay-token-BBBBBBBBBBBB"


async def test_tokens_guard_every_route_but_health(start_relay: RelayFactory) -> None:
    async with start_relay(RELAY_API_TOKENS=f"{TOKEN_1}, {TOKEN_2}") as r:
        bodies: list[str] = []

        def keep(resp: httpx.Response) -> httpx.Response:
            bodies.append(resp.text + json.dumps(dict(resp.headers)))
            return resp

        job = {"video_model_id": "unknown-auth", "callback_url": HOOK}
        # r.client sends the first token (the fixture does that)
        assert keep(await r.client.post("/jobs", json=job)).status_code == 201

        async with httpx.AsyncClient(base_url=r.base_url, timeout=10) as bare:
            protected: list[tuple[str, str, dict[str, Any] | None]] = [
                ("GET", "/jobs", None),
                ("POST", "/jobs", job),
                ("POST", "/jobs", {"bad": "body"}),  # auth comes before validation
                ("POST", "/jobs/batch", {"jobs": [job]}),
                ("GET", "/jobs/unknown-auth", None),
                ("PATCH", "/jobs/unknown-auth", {"metadata": {}}),
                ("DELETE", "/jobs/unknown-auth", None),
                ("POST", "/jobs/unknown-auth/redeliver", None),
                ("GET", "/jobs/does-not-exist", None),
            ]
            for headers in (
                {},
                {"authorization": "Bearer wrong-token"},
                {"authorization": f"Basic {TOKEN_2}"},
                {"authorization": TOKEN_2},
                {"authorization": f"Bearer {TOKEN_2}x"},
                {"authorization": f"Bearer {TOKEN_2[:-1]}"},
                {"authorization": "Bearer"},
                {"x-api-key": TOKEN_2},
            ):
                for method, path, body in protected:
                    resp = keep(await bare.request(method, path, json=body, headers=headers))
                    assert resp.status_code == 401, (method, path, headers, resp.text)
                    assert resp.json()["detail"]
                    assert resp.headers.get("www-authenticate", "").lower().startswith("bearer")
            # still tracked and untouched after all that
            good = {"authorization": f"Bearer {TOKEN_2}"}
            resp = keep(await bare.get("/jobs/unknown-auth", headers=good))
            assert resp.status_code == 200, resp.text
            assert resp.json()["status"] == "pending"
            assert keep(await bare.get("/jobs", headers=good)).status_code == 200
            assert keep(await bare.post("/jobs", json=job, headers=good)).status_code == 200
            assert keep(await bare.post("/jobs", json={"x": 1}, headers=good)).status_code == 422

            for path in ("/healthz", "/readyz", "/metrics"):
                assert keep(await bare.get(path)).status_code == 200, path
            keep(await bare.get("/openapi.json"))
            keep(await r.client.get("/openapi.json"))
            keep(await r.client.get("/jobs"))
            keep(await r.client.get("/readyz"))
            keep(await r.client.get("/metrics"))

        for text in bodies:
            assert TOKEN_1 not in text
            assert TOKEN_2 not in text


async def test_without_tokens_the_api_is_open(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r, httpx.AsyncClient(base_url=r.base_url, timeout=10) as bare:
        assert (await bare.get("/jobs")).status_code == 200


# -- health, metrics, OpenAPI ------------------------------------------------------------------------


async def test_health_and_readiness(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        resp = await r.client.get("/healthz")
        assert resp.status_code == 200
        assert resp.json()["status"] == "ok"
        resp = await r.client.get("/readyz")
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "ok"


async def test_metrics_are_prometheus_text(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
        await register(r, "unknown-metrics")
        assert await r.relay.poll_due_jobs() == 1
        assert (await r.client.get("/jobs/unknown-metrics")).json()["poll_count"] == 1
        resp = await r.client.get("/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.text
        assert "# TYPE akool_relay_jobs gauge" in text
        assert 'akool_relay_jobs{status="pending"} 1.0' in text
        assert "# TYPE akool_relay_polls_total counter" in text
        assert "akool_relay_polls_total{" in text  # a poll outcome was counted
        for status in STATUSES:
            assert f'akool_relay_jobs{{status="{status}"}}' in text


async def test_openapi_lists_every_route(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
        resp = await r.client.get("/openapi.json")
        assert resp.status_code == 200
        paths = resp.json()["paths"]
        expected = {
            "/jobs": {"get", "post"},
            "/jobs/batch": {"post"},
            "/jobs/{video_model_id}": {"get", "patch", "delete"},
            "/jobs/{video_model_id}/redeliver": {"post"},
            "/healthz": {"get"},
            "/readyz": {"get"},
            "/metrics": {"get"},
        }
        for path, methods in expected.items():
            assert path in paths, f"{path} missing from {sorted(paths)}"
            assert methods <= set(paths[path]), (path, sorted(paths[path]))
