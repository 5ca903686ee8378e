"""The HTTP API of SPEC §3 over real HTTP, on SQLite and PostgreSQL: registering jobs (one at a
time, in batches, and twice at once), then reading, changing, cancelling and redelivering one job, and
what a change does to the callbacks that follow.

Every relay here is driven (`driven=True`): nothing polls or delivers unless the test steps it with
`poll()` / `deliver()` below, and simulated jobs move only on `sim_clock` (queueing 0.2 s, then
processing 0.4 s). Ids starting with `unknown` never exist at the simulator, so those jobs stay
`pending` (the not-found grace is the default 60 s).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from app.sandbox.receiver import Receiver
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.api import (
    JOB_FIELDS,
    OTHER_HOOK,
    assert_detail,
    assert_field_error,
    assert_item_field_error,
    errors_of,
    is_utc,
)
from tests.support.relay import (
    DUE_AT_ONCE,
    HOOK,
    PAST_THE_END,
    RelayFactory,
    RunningRelay,
    deliver,
    detail,
    poll,
    register,
    requests_for,
)


def received(rec: Receiver) -> list[tuple[str, Any]]:
    """The accepted callbacks, in arrival order: (type, data.metadata)."""
    return [(c.type, c.body["data"]["metadata"]) for c in rec.accepted]


# -- POST /jobs: created, same, conflict -------------------------------------------------------------


async def test_post_jobs_201_then_200_then_409(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
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
    async with start_relay(driven=True) as r:
        job = await register(r, "unknown-ev", events=["progress", "completed", "progress"])
        assert job["events"] == ["progress", "completed"]
        assert job["metadata"] == {}


# -- POST /jobs/batch --------------------------------------------------------------------------------


async def test_batch_gives_one_result_per_item_in_order(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
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
    async with start_relay(driven=True) as r:
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


# -- one job -----------------------------------------------------------------------------------------


async def test_unknown_id_is_404_everywhere(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
        assert_detail(await r.client.get("/jobs/nope"), 404)
        assert_detail(await r.client.patch("/jobs/nope", json={"metadata": {"a": 1}}), 404)
        assert_detail(await r.client.delete("/jobs/nope"), 404)
        assert_detail(await r.client.post("/jobs/nope/redeliver"), 404)
        # an id that could never be valid is not a 500 either
        assert (await r.client.get("/jobs/" + "x" * 300)).status_code in (404, 422)
        assert (await r.client.get("/jobs/%C3%A9")).status_code in (404, 422)


async def test_patch_changes_callback_metadata_and_events(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
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
    async with start_relay(driven=True) as r:
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


async def test_delete_cancels_and_stops_polling(
    start_relay: RelayFactory, simulator: tuple[Simulator, str]
) -> None:
    sim, _ = simulator
    async with start_relay(driven=True, **DUE_AT_ONCE) as r:
        await register(r, "unknown-del")
        await register(r, "unknown-kept")  # still tracked: shows that a step does poll what is due
        assert await poll(r) == 2
        resp = await r.client.delete("/jobs/unknown-del")
        assert resp.status_code == 204
        assert resp.content == b""
        job = await detail(r, "unknown-del")
        assert job["status"] == "cancelled"
        assert job["next_poll_at"] is None
        assert job["finished_at"] is not None
        assert [(t["from"], t["to"]) for t in job["transitions"]] == [("pending", "cancelled")]
        polls, asked = job["poll_count"], len(requests_for(sim, "unknown-del"))
        assert (polls, asked) == (1, 1)
        for _ in range(3):  # both would be due again at every step; only the tracked one is polled
            assert await poll(r) == 1
        assert (await detail(r, "unknown-del"))["poll_count"] == polls
        assert len(requests_for(sim, "unknown-del")) == asked
        assert (await detail(r, "unknown-kept"))["poll_count"] == 4
        # deleting again changes nothing and is not an error
        assert (await r.client.delete("/jobs/unknown-del")).status_code == 204
        assert (await detail(r, "unknown-del"))["status"] == "cancelled"


async def test_redeliver_without_an_event_is_409(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
        await register(r, "unknown-r")
        detail = assert_detail(await r.client.post("/jobs/unknown-r/redeliver"), 409)
        assert "event" in detail


async def test_redeliver_sends_the_latest_event_again(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    async with start_relay(driven=True, **DUE_AT_ONCE) as r:
        await register(r, "vid-redeliver", hook_url)
        assert await poll(r) == 1  # queueing: not one of its events
        sim_clock.advance(PAST_THE_END)
        assert await poll(r) == 1  # completed
        assert await deliver(r) == 1
        job = await detail(r, "vid-redeliver")
        assert job["delivery"] == "delivered"
        webhook_id = job["deliveries"][-1]["webhook_id"]
        assert [c.webhook_id for c in rec.accepted] == [webhook_id]
        assert await deliver(r) == 0  # delivered: nothing is due until it is asked for again

        resp = await r.client.post("/jobs/vid-redeliver/redeliver")
        assert resp.status_code == 202, resp.text
        assert resp.json()["webhook_id"] == webhook_id
        assert await deliver(r) == 1
        job = await detail(r, "vid-redeliver")
        assert len(job["deliveries"][-1]["attempts"]) == 2
        assert job["delivery"] == "delivered"
    assert [c.webhook_id for c in rec.accepted] == [webhook_id, webhook_id]


# -- a change applies to the callbacks that follow ---------------------------------------------------


async def test_patch_of_events_changes_which_callbacks_follow(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    async with start_relay(driven=True, **DUE_AT_ONCE) as r:
        vid = "vid-patch-events"
        await register(r, vid, hook_url, events=["queueing", "processing", "completed"])
        assert await poll(r) == 1  # queueing
        assert await deliver(r) == 1
        assert [c.type for c in rec.accepted] == ["job.queueing"]

        # processing out, progress in
        resp = await r.client.patch(f"/jobs/{vid}", json={"events": ["progress", "completed"]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["events"] == ["progress", "completed"]

        sim_clock.advance(0.3)  # processing, a quarter done
        assert await poll(r) == 1
        assert (await detail(r, vid))["status"] == "processing"
        assert await deliver(r) == 0  # no job.processing: the job no longer asks for it
        sim_clock.advance(0.1)  # processing, half done: the progress changed
        assert await poll(r) == 1
        assert await deliver(r) == 1
        sim_clock.advance(PAST_THE_END)
        assert await poll(r) == 1
        assert await deliver(r) == 1
        job = await detail(r, vid)
        assert (job["status"], job["delivery"]) == ("completed", "delivered")
    types = [c.type for c in rec.accepted]
    assert types == ["job.queueing", "job.progress", "job.completed"]
    assert [c.body["data"]["events"] for c in rec.accepted] == [
        ["queueing", "processing", "completed"],
        ["progress", "completed"],
        ["progress", "completed"],
    ]


async def test_patch_of_metadata_changes_the_callbacks_that_follow(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> None:
    rec, hook_url = receiver
    async with start_relay(driven=True, **DUE_AT_ONCE) as r:
        vid = "vid-patch-metadata"
        await register(r, vid, hook_url, events=["queueing", "completed"], metadata={"v": 1})
        assert await poll(r) == 1  # queueing
        assert await deliver(r) == 1
        assert received(rec) == [("job.queueing", {"v": 1})]

        changed = {"v": 2, "order": {"id": "A-17", "lines": [1, 2]}}
        resp = await r.client.patch(f"/jobs/{vid}", json={"metadata": changed})
        assert resp.status_code == 200, resp.text
        assert resp.json()["metadata"] == changed

        sim_clock.advance(PAST_THE_END)
        assert await poll(r) == 1  # completed
        assert await deliver(r) == 1
    assert received(rec) == [("job.queueing", {"v": 1}), ("job.completed", changed)]


# -- two registrations of one id at the same instant ---------------------------------------------------

RACES = 10  # pairs, one after the other: each pair is sent at once


async def _register_twice_at_once(
    r: RunningRelay, video_model_id: str, first_url: str, second_url: str
) -> list[httpx.Response]:
    return list(
        await asyncio.gather(
            r.client.post("/jobs", json={"video_model_id": video_model_id, "callback_url": first_url}),
            r.client.post("/jobs", json={"video_model_id": video_model_id, "callback_url": second_url}),
        )
    )


async def _rows(r: RunningRelay) -> list[dict[str, Any]]:
    body = (await r.client.get("/jobs", params={"limit": 500})).json()
    assert body["next_cursor"] is None
    items: list[dict[str, Any]] = body["items"]
    return items


async def test_one_id_registered_twice_at_once_with_one_url_is_201_and_200(
    start_relay: RelayFactory,
) -> None:
    async with start_relay(driven=True) as r:
        ids = [f"unknown-race-{i}" for i in range(RACES)]
        for vid in ids:
            answers = await _register_twice_at_once(r, vid, HOOK, HOOK)
            assert sorted(a.status_code for a in answers) == [200, 201], [a.text for a in answers]
            created, same = sorted(answers, key=lambda a: a.status_code, reverse=True)
            assert same.json() == created.json()  # the one job, as it was made
        rows = await _rows(r)
        assert sorted(j["video_model_id"] for j in rows) == sorted(ids)  # one row each
        assert (await r.client.get("/jobs")).json()["summary"]["jobs"]["pending"] == RACES


async def test_one_id_registered_twice_at_once_with_two_urls_is_201_and_409(
    start_relay: RelayFactory,
) -> None:
    async with start_relay(driven=True) as r:
        ids = [f"unknown-race-{i}" for i in range(RACES)]
        for vid in ids:
            answers = await _register_twice_at_once(r, vid, HOOK, OTHER_HOOK)
            assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
            [created] = [a for a in answers if a.status_code == 201]
            [conflict] = [a for a in answers if a.status_code == 409]
            assert "callback_url" in assert_detail(conflict, 409)
            winner = created.json()["callback_url"]
            assert winner in (HOOK, OTHER_HOOK)
            assert (await detail(r, vid))["callback_url"] == winner  # the loser changed nothing
        rows = await _rows(r)
        assert sorted(j["video_model_id"] for j in rows) == sorted(ids)  # one row each
