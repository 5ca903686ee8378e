"""The HTTP API of SPEC §3 over real HTTP, on SQLite and PostgreSQL.

Every bad input gets a 4xx whose body says what is wrong, never a 500. Ids starting with `unknown`
never exist at the simulator, so those jobs stay `pending` for the whole test (the not-found grace is
the default 60 s); other ids complete within a second.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from app import netguard
from app.receiver import Receiver
from tests.conftest import RelayFactory, RunningRelay, wait_job

HOOK = "http://127.0.0.1:9/hook"  # never called: jobs using it stay pending
OTHER_HOOK = "http://127.0.0.1:9/other"

JOB_FIELDS = {
    "video_model_id",
    "status",
    "video_status",
    "progress",
    "video_url",
    "error_code",
    "error_reason",
    "audio_splits",
    "callback_url",
    "events",
    "metadata",
    "created_at",
    "updated_at",
    "finished_at",
    "last_polled_at",
    "next_poll_at",
    "poll_count",
    "delivery",
}
STATUSES = {"pending", "queueing", "processing", "completed", "failed", "expired", "cancelled"}
DELIVERY_STATES = {"pending", "retrying", "delivered", "dead"}


def errors_of(response: httpx.Response) -> list[dict[str, Any]]:
    """The field errors of a 422, each with a location and a message."""
    assert response.status_code == 422, f"{response.status_code}: {response.text}"
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    for error in detail:
        assert error["msg"], error
        assert "loc" in error, error
    return detail


def assert_field_error(response: httpx.Response, field: str) -> list[dict[str, Any]]:
    detail = errors_of(response)
    assert any(field in [str(part) for part in e["loc"]] for e in detail), f"{field} not named in {detail}"
    return detail


def assert_item_field_error(item: dict[str, Any], field: str) -> None:
    assert item["status"] == 422, item
    detail = item["detail"]
    assert isinstance(detail, list) and detail, item
    assert any(field in [str(part) for part in e["loc"]] for e in detail), f"{field} not named in {detail}"
    assert all(e["msg"] for e in detail)


def assert_detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


def is_utc(value: str) -> bool:
    return datetime.fromisoformat(value).utcoffset() == timedelta(0)


async def register(
    r: RunningRelay, video_model_id: str, callback_url: str = HOOK, **extra: Any
) -> dict[str, Any]:
    response = await r.client.post(
        "/jobs", json={"video_model_id": video_model_id, "callback_url": callback_url, **extra}
    )
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


# -- POST /jobs: bad input ---------------------------------------------------------------------------


async def test_post_jobs_rejects_unknown_fields_and_wrong_types(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        ok = {"video_model_id": "unknown-a", "callback_url": HOOK}
        resp = await r.client.post("/jobs", json={**ok, "colour": "blue"})
        detail = assert_field_error(resp, "colour")
        assert any(e["type"] == "extra_forbidden" for e in detail)

        assert_field_error(
            await r.client.post("/jobs", json={**ok, "video_model_id": 12345}), "video_model_id"
        )
        assert_field_error(await r.client.post("/jobs", json={**ok, "events": "completed"}), "events")
        assert_field_error(await r.client.post("/jobs", json={**ok, "callback_url": 7}), "callback_url")
        assert_field_error(await r.client.post("/jobs", json={"callback_url": HOOK}), "video_model_id")
        assert_field_error(await r.client.post("/jobs", json={"video_model_id": "unknown-a"}), "callback_url")
        assert_field_error(
            await r.client.post("/jobs", json={**ok, "video_model_id": None}), "video_model_id"
        )
        errors_of(await r.client.post("/jobs", json=[ok]))
        errors_of(await r.client.post("/jobs", json="unknown-a"))
        # nothing was registered by any of this
        assert (await r.client.get("/jobs")).json()["items"] == []


@pytest.mark.parametrize("bad_id", ["a/b", "a b", "é", "x" * 65, "", "a.b", "a\nb", "日本"])
async def test_post_jobs_rejects_bad_ids(start_relay: RelayFactory, bad_id: str) -> None:
    async with start_relay() as r:
        resp = await r.client.post("/jobs", json={"video_model_id": bad_id, "callback_url": HOOK})
        assert_field_error(resp, "video_model_id")


async def test_post_jobs_accepts_the_edges_of_the_id_alphabet(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        for good in ["unknown-" + "x" * 56, "unknown_A-z_0-9", "unknown"]:
            assert len(good) <= 64
            job = await register(r, good)
            assert job["video_model_id"] == good


async def test_post_jobs_rejects_bad_callback_urls(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        for url in [
            "ftp://x",
            "not a url",
            "http://user:pw@host/",
            "https://user@example.com/",
            "",
            "//example.com/x",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "http://",
            "http://exa mple.com/",
            "https://example.com:99999/",
            "http://" + "a" * 2100 + ".com/",
        ]:
            resp = await r.client.post("/jobs", json={"video_model_id": "unknown-u", "callback_url": url})
            assert_field_error(resp, "callback_url")
            assert "pw" not in json.dumps([e["msg"] for e in resp.json()["detail"]])


async def test_post_jobs_rejects_bad_metadata(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        base = {"video_model_id": "unknown-m", "callback_url": HOOK}
        for metadata in [[1, 2], "a string", 5, True]:
            assert_field_error(await r.client.post("/jobs", json={**base, "metadata": metadata}), "metadata")
        big = {"blob": "x" * (16 * 1024)}
        detail = assert_field_error(await r.client.post("/jobs", json={**base, "metadata": big}), "metadata")
        assert any("16384" in e["msg"] or "16 KiB" in e["msg"] for e in detail), detail
        # just under the limit is fine
        fits = {"b": "x" * (16 * 1024 - 20)}
        assert len(json.dumps(fits, separators=(",", ":"))) <= 16 * 1024
        job = await register(r, "unknown-m", metadata=fits)
        assert job["metadata"] == fits


async def test_post_jobs_rejects_unknown_or_empty_events(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        base = {"video_model_id": "unknown-e", "callback_url": HOOK}
        for events in [["completed", "exploded"], ["cancelled"], ["COMPLETED"], [], [1]]:
            assert_field_error(await r.client.post("/jobs", json={**base, "events": events}), "events")


async def test_post_jobs_rejects_a_body_that_is_not_json(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        resp = await r.client.post("/jobs", content=b"{nope", headers={"content-type": "application/json"})
        detail = errors_of(resp)
        assert any("json" in (e["msg"] + e.get("type", "")).lower() for e in detail), detail
        resp = await r.client.post("/jobs", content=b"", headers={"content-type": "application/json"})
        assert 400 <= resp.status_code < 500, resp.text


async def test_post_jobs_rejects_a_body_over_2_mib(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        payload = json.dumps(
            {
                "video_model_id": "unknown-big",
                "callback_url": HOOK,
                "metadata": {"x": "y" * (2 * 1024 * 1024)},
            }
        ).encode()
        resp = await r.client.post("/jobs", content=payload, headers={"content-type": "application/json"})
        assert_detail(resp, 413)
        assert "larger" in resp.json()["detail"] or "large" in resp.json()["detail"]
        # the relay is still fine afterwards
        assert (await r.client.get("/healthz")).status_code == 200
        assert (await r.client.get("/jobs/unknown-big")).status_code == 404


async def test_post_jobs_rejects_a_chunked_body_over_2_mib(start_relay: RelayFactory) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield (
            b'{"video_model_id": "unknown-chunked", "callback_url": "'
            + HOOK.encode()
            + b'", "metadata": {"x": "'
        )
        for _ in range(40):
            yield b"y" * 65536  # 2.5 MiB in all, with no Content-Length
        yield b'"}}'

    async with start_relay() as r:
        resp = await r.client.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert_detail(resp, 413)
        assert (await r.client.get("/jobs/unknown-chunked")).status_code == 404


async def test_batch_body_over_2_mib_is_413(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        jobs = [
            {"video_model_id": f"unknown-{i}", "callback_url": HOOK, "metadata": {"x": "y" * 3000}}
            for i in range(1000)
        ]
        resp = await r.client.post("/jobs/batch", json={"jobs": jobs})
        assert_detail(resp, 413)


# -- POST /jobs: created, same, conflict -------------------------------------------------------------


async def test_post_jobs_201_then_200_then_409(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        resp = await r.client.post(
            "/jobs",
            json={
                "video_model_id": "unknown-1",
                "callback_url": HOOK,
                "metadata": {"order": 7, "tags": ["a"]},
            },
        )
        assert resp.status_code == 201, resp.text
        job = resp.json()
        assert set(job) >= JOB_FIELDS, JOB_FIELDS - set(job)
        assert job["video_model_id"] == "unknown-1"
        assert job["status"] == "pending"
        assert job["callback_url"] == HOOK
        assert job["events"] == ["completed", "failed", "expired"]
        assert job["metadata"] == {"order": 7, "tags": ["a"]}
        assert job["poll_count"] == 0
        assert job["delivery"] == "none"
        assert job["video_status"] is None
        assert job["video_url"] is None
        assert job["error_code"] is None
        assert job["finished_at"] is None
        assert is_utc(job["created_at"]) and is_utc(job["updated_at"])
        assert job["next_poll_at"] is not None and is_utc(job["next_poll_at"])

        again = await r.client.post("/jobs", json={"video_model_id": "unknown-1", "callback_url": HOOK})
        assert again.status_code == 200, again.text
        assert again.json()["video_model_id"] == "unknown-1"
        assert again.json()["created_at"] == job["created_at"]
        assert again.json()["metadata"] == {"order": 7, "tags": ["a"]}  # the existing job, unchanged

        conflict = await r.client.post(
            "/jobs", json={"video_model_id": "unknown-1", "callback_url": OTHER_HOOK}
        )
        detail = assert_detail(conflict, 409)
        assert "callback_url" in detail
        assert (await r.client.get("/jobs/unknown-1")).json()["callback_url"] == HOOK


async def test_post_jobs_keeps_chosen_events_deduplicated(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        job = await register(r, "unknown-ev", events=["progress", "completed", "progress"])
        assert job["events"] == ["progress", "completed"]
        assert job["metadata"] == {}


async def test_private_callback_is_refused_unless_allowed(start_relay: RelayFactory) -> None:
    async with start_relay(RELAY_ALLOW_PRIVATE_CALLBACKS=False) as r:
        for url in ["http://127.0.0.1:9/x", "http://localhost:9/x", "http://10.1.2.3/x", "http://[::1]:9/x"]:
            resp = await r.client.post("/jobs", json={"video_model_id": "unknown-p", "callback_url": url})
            detail = assert_field_error(resp, "callback_url")
            assert any("non-public" in e["msg"] or "resolve" in e["msg"] for e in detail), detail
        batch = await r.client.post(
            "/jobs/batch",
            json={"jobs": [{"video_model_id": "unknown-p", "callback_url": "http://127.0.0.1:9/x"}]},
        )
        assert batch.status_code == 200, batch.text
        [item] = batch.json()["results"]
        assert_item_field_error(item, "callback_url")
        assert (await r.client.get("/jobs")).json()["items"] == []


@pytest.fixture
def public_hooks(monkeypatch: pytest.MonkeyPatch) -> str:
    """hooks.example.com resolves to a public address (no real DNS); everything else as usual."""
    real = netguard.resolve

    async def resolve(host: str, port: int) -> list[netguard.IPAddress]:
        if host == "hooks.example.com":
            return [ipaddress.ip_address("93.184.216.34")]
        return await real(host, port)

    monkeypatch.setattr(netguard, "resolve", resolve)
    return "http://hooks.example.com/relay"


async def test_patch_refuses_a_private_callback(start_relay: RelayFactory, public_hooks: str) -> None:
    async with start_relay(RELAY_ALLOW_PRIVATE_CALLBACKS=False) as r:
        await register(r, "unknown-pub", public_hooks)
        resp = await r.client.patch("/jobs/unknown-pub", json={"callback_url": "http://127.0.0.1:9/x"})
        assert_field_error(resp, "callback_url")
        assert (await r.client.get("/jobs/unknown-pub")).json()["callback_url"] == public_hooks
        resp = await r.client.patch("/jobs/unknown-pub", json={"callback_url": public_hooks + "/v2"})
        assert resp.status_code == 200, resp.text


# -- POST /jobs/batch --------------------------------------------------------------------------------


async def test_batch_gives_one_result_per_item_in_order(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        await register(r, "unknown-tracked", HOOK)
        items = [
            {"video_model_id": "unknown-b1", "callback_url": HOOK},  # new
            {"video_model_id": "bad id!", "callback_url": HOOK},  # invalid id
            {"video_model_id": "unknown-tracked", "callback_url": OTHER_HOOK},  # conflict
            {"video_model_id": "unknown-tracked", "callback_url": HOOK},  # same
            {"video_model_id": "unknown-b2", "callback_url": "ftp://x"},  # invalid URL
            {"video_model_id": "unknown-b3", "callback_url": HOOK, "extra": 1},  # unknown field
            {"video_model_id": "unknown-b1", "callback_url": HOOK},  # repeated in the batch: same
            {"video_model_id": "unknown-b4", "callback_url": HOOK, "events": ["progress"]},  # new
        ]
        resp = await r.client.post("/jobs/batch", json={"jobs": items})
        assert resp.status_code == 200, resp.text
        results = resp.json()["results"]
        assert [x["status"] for x in results] == [201, 422, 409, 200, 422, 422, 200, 201]
        assert results[0]["job"]["video_model_id"] == "unknown-b1"
        assert set(results[0]["job"]) >= JOB_FIELDS
        assert_item_field_error(results[1], "video_model_id")
        assert "callback_url" in results[2]["detail"]
        assert results[2]["job"]["callback_url"] == HOOK  # the tracked job is left alone
        assert results[3]["job"]["video_model_id"] == "unknown-tracked"
        assert_item_field_error(results[4], "callback_url")
        assert_item_field_error(results[5], "extra")
        assert results[7]["job"]["events"] == ["progress"]

        listed = {j["video_model_id"] for j in (await r.client.get("/jobs")).json()["items"]}
        assert listed == {"unknown-tracked", "unknown-b1", "unknown-b4"}


async def test_batch_limits(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        too_many = [{"video_model_id": f"unknown-{i}", "callback_url": HOOK} for i in range(1001)]
        assert_field_error(await r.client.post("/jobs/batch", json={"jobs": too_many}), "jobs")
        assert_field_error(await r.client.post("/jobs/batch", json={"jobs": []}), "jobs")
        assert_field_error(await r.client.post("/jobs/batch", json={}), "jobs")
        assert_field_error(await r.client.post("/jobs/batch", json={"jobs": "x"}), "jobs")
        errors_of(await r.client.post("/jobs/batch", json={"jobs": [], "more": 1}))
        assert (await r.client.get("/jobs")).json()["items"] == []

        exactly = [{"video_model_id": f"unknown-{i}", "callback_url": HOOK} for i in range(1000)]
        resp = await r.client.post("/jobs/batch", json={"jobs": exactly})
        assert resp.status_code == 200, resp.text
        assert [x["status"] for x in resp.json()["results"]] == [201] * 1000
        assert (await r.client.get("/jobs?limit=1")).json()["summary"]["jobs"]["pending"] == 1000


# -- GET /jobs ---------------------------------------------------------------------------------------


async def test_list_is_newest_first_and_pages_with_a_cursor(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
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


async def test_list_filters_by_status(start_relay: RelayFactory, receiver: tuple[Receiver, str]) -> None:
    _rec, hook_url = receiver
    async with start_relay() as r:
        await register(r, "unknown-f1")
        await register(r, "vid-f2", hook_url)
        await register(r, "unknown-f3")
        await register(r, "vid-f4", hook_url)
        await register(r, "unknown-f5")
        await r.client.delete("/jobs/unknown-f5")
        for vid in ("vid-f2", "vid-f4"):
            await wait_job(r.client, vid, lambda j: j["status"] == "completed")

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
    async with start_relay() as r:
        assert_field_error(await r.client.get("/jobs?status=done"), "status")
        assert_field_error(await r.client.get("/jobs?status=pending&status=bogus"), "status")
        for limit in ["0", "501", "-1", "ten", "1.5"]:
            assert_field_error(await r.client.get("/jobs", params={"limit": limit}), "limit")
        for cursor in ["garbage", "aWQ6eA", "aWQ6", "aWQ6LTE", "!!!", "x" * 300, "%00"]:
            resp = await r.client.get("/jobs", params={"cursor": cursor})
            assert_field_error(resp, "cursor")
        for limit in ["1", "500"]:
            assert (await r.client.get("/jobs", params={"limit": limit})).status_code == 200


async def test_list_summary(start_relay: RelayFactory, receiver: tuple[Receiver, str]) -> None:
    _rec, hook_url = receiver
    async with start_relay() as r:
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
        await wait_job(r.client, "vid-s2", lambda j: j["delivery"] == "delivered")
        await asyncio.sleep(0.2)
        summary = (await r.client.get("/jobs")).json()["summary"]
        assert summary["jobs"] == {**dict.fromkeys(STATUSES, 0), "pending": 1, "completed": 1}
        assert summary["deliveries"] == {**dict.fromkeys(DELIVERY_STATES, 0), "delivered": 1}
        age = summary["oldest_unfinished_age_seconds"]
        assert isinstance(age, int | float) and 0.2 <= age < 60
        upstream = summary["upstream"]
        assert upstream["state"] == "ok"
        assert upstream["consecutive_errors"] == 0
        assert upstream["last_success_at"] is not None and is_utc(upstream["last_success_at"])


# -- one job -----------------------------------------------------------------------------------------


async def test_unknown_id_is_404_everywhere(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        assert_detail(await r.client.get("/jobs/nope"), 404)
        assert_detail(await r.client.patch("/jobs/nope", json={"metadata": {"a": 1}}), 404)
        assert_detail(await r.client.delete("/jobs/nope"), 404)
        assert_detail(await r.client.post("/jobs/nope/redeliver"), 404)
        # an id that could never be valid is not a 500 either
        assert (await r.client.get("/jobs/" + "x" * 300)).status_code in (404, 422)
        assert (await r.client.get("/jobs/%C3%A9")).status_code in (404, 422)


async def test_patch_changes_callback_metadata_and_events(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        before = await register(r, "unknown-patch", metadata={"a": 1})
        resp = await r.client.patch("/jobs/unknown-patch", json={"callback_url": OTHER_HOOK})
        assert resp.status_code == 200, resp.text
        assert resp.json()["callback_url"] == OTHER_HOOK
        assert resp.json()["metadata"] == {"a": 1}

        resp = await r.client.patch(
            "/jobs/unknown-patch", json={"metadata": {"b": [2]}, "events": ["failed"]}
        )
        assert resp.status_code == 200, resp.text
        after = resp.json()
        assert after["metadata"] == {"b": [2]}
        assert after["events"] == ["failed"]
        assert after["callback_url"] == OTHER_HOOK
        assert after["updated_at"] >= before["updated_at"]
        assert set(after) >= JOB_FIELDS

        stored = (await r.client.get("/jobs/unknown-patch")).json()
        assert (stored["callback_url"], stored["metadata"], stored["events"]) == (
            OTHER_HOOK,
            {"b": [2]},
            ["failed"],
        )
        assert stored["transitions"] == []
        assert stored["deliveries"] == []

        # a no-op PATCH is fine
        assert (await r.client.patch("/jobs/unknown-patch", json={})).status_code == 200
        # the new callback counts for re-registration
        again = await r.client.post(
            "/jobs", json={"video_model_id": "unknown-patch", "callback_url": OTHER_HOOK}
        )
        assert again.status_code == 200


async def test_patch_rejects_bad_changes(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        await register(r, "unknown-bad-patch")
        url = "/jobs/unknown-bad-patch"
        assert_field_error(await r.client.patch(url, json={"status": "completed"}), "status")
        assert_field_error(await r.client.patch(url, json={"video_model_id": "other"}), "video_model_id")
        assert_field_error(await r.client.patch(url, json={"callback_url": "ftp://x"}), "callback_url")
        assert_field_error(await r.client.patch(url, json={"metadata": [1]}), "metadata")
        assert_field_error(await r.client.patch(url, json={"metadata": {"x": "y" * 17000}}), "metadata")
        assert_field_error(await r.client.patch(url, json={"events": ["nope"]}), "events")
        assert_field_error(await r.client.patch(url, json={"events": []}), "events")
        errors_of(await r.client.patch(url, content=b"{nope", headers={"content-type": "application/json"}))
        job = (await r.client.get(url)).json()
        assert (job["callback_url"], job["metadata"], job["events"]) == (
            HOOK,
            {},
            ["completed", "failed", "expired"],
        )


async def test_delete_cancels_and_stops_polling(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        await register(r, "unknown-del")
        resp = await r.client.delete("/jobs/unknown-del")
        assert resp.status_code == 204
        assert resp.content == b""
        job = (await r.client.get("/jobs/unknown-del")).json()
        assert job["status"] == "cancelled"
        assert job["next_poll_at"] is None
        assert job["finished_at"] is not None
        assert [(t["from"], t["to"]) for t in job["transitions"]] == [("pending", "cancelled")]
        polls = job["poll_count"]
        await asyncio.sleep(0.5)
        assert (await r.client.get("/jobs/unknown-del")).json()["poll_count"] == polls
        # deleting again changes nothing and is not an error
        assert (await r.client.delete("/jobs/unknown-del")).status_code == 204
        assert (await r.client.get("/jobs/unknown-del")).json()["status"] == "cancelled"


async def test_redeliver_without_an_event_is_409(start_relay: RelayFactory) -> None:
    async with start_relay() as r:
        await register(r, "unknown-r")
        detail = assert_detail(await r.client.post("/jobs/unknown-r/redeliver"), 409)
        assert "event" in detail


async def test_redeliver_sends_the_latest_event_again(
    start_relay: RelayFactory, receiver: tuple[Receiver, str]
) -> None:
    rec, hook_url = receiver
    async with start_relay() as r:
        await register(r, "vid-redeliver", hook_url)
        job = await wait_job(r.client, "vid-redeliver", lambda j: j["delivery"] == "delivered")
        webhook_id = job["deliveries"][-1]["webhook_id"]
        resp = await r.client.post("/jobs/vid-redeliver/redeliver")
        assert resp.status_code == 202, resp.text
        assert resp.json()["webhook_id"] == webhook_id
        await wait_job(r.client, "vid-redeliver", lambda j: len(j["deliveries"][-1]["attempts"]) >= 2)
    assert [c.webhook_id for c in rec.accepted] == [webhook_id, webhook_id]


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
    async with start_relay() as r, httpx.AsyncClient(base_url=r.base_url, timeout=10) as bare:
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
    async with start_relay() as r:
        await register(r, "unknown-metrics")
        await wait_job(r.client, "unknown-metrics", lambda j: j["poll_count"] >= 1)
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
    async with start_relay() as r:
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
