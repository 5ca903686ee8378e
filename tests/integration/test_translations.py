"""POST /translations (SPEC §7): create at Akool (the simulator, over real HTTP) and track every job.

Akool is asked at most once per Idempotency-Key: the simulator's `creates` shows every create it got.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from app.models import DEFAULT_TENANT_ID
from app.sandbox.receiver import Receiver
from app.sandbox.simulator import Simulator
from app.store.creates import tenant_key
from tests.support.procs import fetch, free_port
from tests.support.relay import HOOK, RelayFactory, RunningRelay, wait_job, wait_until

VIDEO = "https://example.com/source.mp4"
# Room for a create on a busy machine (FAST's 1 s is for polls): past it an answer is `unknown`.
ROOMY = {"RELAY_AKOOL_TIMEOUT": 10}


def order(language: str = "es", callback_url: str = HOOK, **extra: Any) -> dict[str, Any]:
    return {"akool": {"url": VIDEO, "language": language}, "callback_url": callback_url, **extra}


async def translate(r: RunningRelay, key: str | None, body: dict[str, Any]) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return await r.client.post("/translations", json=body, headers=headers)


async def kept_state(db_url: str, key: str) -> str | None:
    """The state of the `default` tenant's row for Idempotency-Key `key`."""
    row_key = tenant_key(DEFAULT_TENANT_ID, key)
    rows = await fetch(db_url, f"SELECT state FROM akool_create WHERE key = '{row_key}'")
    return str(rows[0][0]) if rows else None


async def test_one_language_makes_one_job_that_is_tracked_to_its_callback(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], receiver: tuple[Receiver, str]
) -> None:
    sim, _ = simulator
    rec, hook_url = receiver
    async with start_relay(**ROOMY) as r:
        answer = await translate(r, "one-language", order("es", hook_url, metadata={"order": 7}))
        assert answer.status_code == 201, answer.text
        body = answer.json()
        [create] = sim.creates
        [vid] = create.ids
        assert create.body == {"url": VIDEO, "language": "es"}  # no webhookUrl without RELAY_PUBLIC_URL
        assert body["akool"]["data"]["_id"] == vid and body["akool"]["all_results"] is None
        assert [j["video_model_id"] for j in body["jobs"]] == [vid] and body["failed"] == []
        assert body["jobs"][0]["metadata"] == {"order": 7} and body["jobs"][0]["status"] == "pending"
        job = await wait_job(r.client, vid, lambda j: j["delivery"] == "delivered")
    assert job["status"] == "completed"
    assert [(e.type, e.body["data"]["metadata"]) for e in rec.accepted] == [("job.completed", {"order": 7})]


async def test_several_languages_track_every_id_of_all_results(
    start_relay: RelayFactory, simulator: tuple[Simulator, str]
) -> None:
    sim, _ = simulator
    async with start_relay(**ROOMY) as r:
        answer = await translate(r, "three-languages", order("es,fr,de", events=["completed"]))
        assert answer.status_code == 201, answer.text
        body = answer.json()
        [create] = sim.creates
        assert len(create.ids) == 3
        assert [j["video_model_id"] for j in body["jobs"]] == create.ids
        assert all(j["events"] == ["completed"] for j in body["jobs"])
        assert [e["data"]["_id"] for e in body["akool"]["all_results"]] == create.ids
        assert body["failed"] == []
        for vid in create.ids:
            job = await wait_job(r.client, vid, lambda j: j["status"] == "completed")
            assert job["callback_url"] == HOOK
        listed = (await r.client.get("/jobs")).json()["items"]
    assert sorted(j["video_model_id"] for j in listed) == sorted(create.ids)
    assert len(sim.creates) == 1


async def test_the_same_key_and_body_answer_the_first_outcome_again_without_asking_akool(
    start_relay: RelayFactory, simulator: tuple[Simulator, str]
) -> None:
    sim, _ = simulator
    async with start_relay(driven=True, **ROOMY) as r:
        first = await translate(r, "again", order("es,fr"))
        assert first.status_code == 201, first.text
        again = [await translate(r, "again", order("es,fr")) for _ in range(3)]
        jobs = (await r.client.get("/jobs")).json()["items"]
    assert [(a.status_code, a.json()) for a in again] == [(201, first.json())] * 3
    assert len(sim.creates) == 1
    assert len(jobs) == 2  # registered once


async def test_the_same_key_with_another_body_is_422_and_akool_is_not_asked(
    start_relay: RelayFactory, simulator: tuple[Simulator, str]
) -> None:
    sim, _ = simulator
    async with start_relay(driven=True, **ROOMY) as r:
        assert (await translate(r, "reused", order("es"))).status_code == 201
        other = await translate(r, "reused", order("fr"))
        other_callback = await translate(r, "reused", order("es", "http://127.0.0.1:9/other"))
        same = await translate(r, "reused", order("es"))
    assert other.status_code == 422 and "another request body" in other.json()["detail"]
    assert other_callback.status_code == 422
    assert same.status_code == 201
    assert len(sim.creates) == 1


async def test_a_business_error_is_502_with_akools_code_and_message_and_is_kept(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], db_url: str
) -> None:
    sim, _ = simulator
    sim.set_create_faults(error_code=1006, error_msg="Insufficient credits")
    async with start_relay(driven=True, **ROOMY) as r:
        refused = await translate(r, "no-credits", order("es"))
        sim.set_create_faults()  # Akool would accept now, but the key's outcome is kept
        again = await translate(r, "no-credits", order("es"))
        jobs = (await r.client.get("/jobs")).json()["items"]
    assert refused.status_code == 502
    assert refused.json() == {"detail": "Insufficient credits", "akool_code": 1006}
    assert (again.status_code, again.json()) == (502, refused.json())
    assert len(sim.creates) == 1 and jobs == []
    assert await kept_state(db_url, "no-credits") == "done"


async def test_one_failing_language_is_listed_in_failed_and_the_others_are_tracked(
    start_relay: RelayFactory, simulator: tuple[Simulator, str]
) -> None:
    sim, _ = simulator
    sim.set_create_faults(fail_languages=["fr"], fail_code=1015, fail_msg="Create video error")
    async with start_relay(**ROOMY) as r:
        answer = await translate(r, "one-fails", order("es,fr,de"))
        assert answer.status_code == 201, answer.text
        body = answer.json()
        [create] = sim.creates
        assert len(create.ids) == 2
        assert [j["video_model_id"] for j in body["jobs"]] == create.ids
        assert body["failed"] == [{"language": "fr", "akool_code": 1015, "msg": "Create video error"}]
        assert [e["code"] for e in body["akool"]["all_results"]] == [1000, 1015, 1000]
        for vid in create.ids:
            await wait_job(r.client, vid, lambda j: j["status"] == "completed")


async def test_akool_unreachable_is_503_and_the_key_may_be_tried_again(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], db_url: str
) -> None:
    sim, _ = simulator
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    async with start_relay(driven=True, AKOOL_BASE_URL=nowhere, **ROOMY) as r:
        refused = await translate(r, "retry-me", order("es"))
        refused_again = await translate(r, "retry-me", order("es"))
    assert refused.status_code == 503, refused.text
    assert "nothing was sent" in refused.json()["detail"]
    assert refused_again.status_code == 503  # not 409: the key was freed
    assert await kept_state(db_url, "retry-me") is None
    async with start_relay(driven=True, **ROOMY) as r:  # Akool is back (same database)
        created = await translate(r, "retry-me", order("es"))
    assert created.status_code == 201, created.text
    assert len(sim.creates) == 1
    assert await kept_state(db_url, "retry-me") == "done"


async def test_a_dns_failure_is_503_too(start_relay: RelayFactory, db_url: str) -> None:
    async with start_relay(driven=True, AKOOL_BASE_URL="http://akool.invalid", **ROOMY) as r:
        answer = await translate(r, "dns", order("es"))
    assert answer.status_code == 503, answer.text
    assert await kept_state(db_url, "dns") is None


async def test_webhook_url_is_the_public_url_when_set_and_absent_otherwise(
    start_relay: RelayFactory, simulator: tuple[Simulator, str]
) -> None:
    sim, _ = simulator
    async with start_relay(driven=True, RELAY_PUBLIC_URL="https://relay.example.com/", **ROOMY) as r:
        assert (await translate(r, "with-hook", order("es"))).status_code == 201
    async with start_relay(driven=True, **ROOMY) as r:
        assert (await translate(r, "without-hook", order("es"))).status_code == 201
    with_hook, without_hook = sim.creates
    assert with_hook.body == {
        "url": VIDEO,
        "language": "es",
        "webhookUrl": "https://relay.example.com/akool/webhook",
    }
    assert without_hook.body == {"url": VIDEO, "language": "es"}


async def test_the_idempotency_key_is_required_and_at_most_128_characters(
    start_relay: RelayFactory, simulator: tuple[Simulator, str]
) -> None:
    sim, _ = simulator
    async with start_relay(driven=True, **ROOMY) as r:
        missing = await translate(r, None, order("es"))
        empty = await translate(r, "", order("es"))
        too_long = await translate(r, "k" * 129, order("es"))
        longest = await translate(r, "k" * 128, order("es"))
    for answer in (missing, empty, too_long):
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert longest.status_code == 201
    assert len(sim.creates) == 1


async def test_a_refused_callback_url_or_body_is_422_before_anything_is_written_or_sent(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], db_url: str
) -> None:
    sim, _ = simulator
    async with start_relay(driven=True, RELAY_ALLOW_PRIVATE_CALLBACKS=False, **ROOMY) as r:
        private = await translate(r, "guarded", order("es", "http://127.0.0.1:9/hook"))
        no_language = await translate(
            r, "guarded", {"akool": {"url": VIDEO}, "callback_url": "https://example.com/hook"}
        )
        not_http = await translate(r, "guarded", order("es", "ftp://example.com/hook"))
    assert private.status_code == 422 and private.json()["detail"][0]["loc"] == ["body", "callback_url"]
    assert no_language.status_code == 422 and no_language.json()["detail"][0]["loc"][:2] == ["body", "akool"]
    assert not_http.status_code == 422
    assert sim.creates == []
    assert await kept_state(db_url, "guarded") is None


async def test_a_key_whose_first_call_is_running_answers_409_in_progress(
    start_relay: RelayFactory, simulator: tuple[Simulator, str]
) -> None:
    sim, _ = simulator
    sim.set_create_faults(delay=0.6)
    async with start_relay(driven=True, **ROOMY) as r:
        first = asyncio.create_task(translate(r, "slow", order("es")))
        await wait_until(lambda: len(sim.creates) == 1, 5, "the create to reach the simulator")
        meanwhile = await translate(r, "slow", order("es"))
        done = await first
        after = await translate(r, "slow", order("es"))
    assert meanwhile.status_code == 409
    assert meanwhile.json()["state"] == "in_progress" and meanwhile.json()["detail"]
    assert done.status_code == 201, done.text
    assert (after.status_code, after.json()) == (201, done.json())
    assert len(sim.creates) == 1


async def test_a_timeout_after_sending_is_409_unknown_and_akool_is_never_asked_again(
    start_relay: RelayFactory, simulator: tuple[Simulator, str], db_url: str
) -> None:
    sim, _ = simulator
    sim.set_create_faults(delay=4.5)  # Akool makes the job, then answers too late
    async with start_relay(driven=True, RELAY_AKOOL_TIMEOUT=3) as r:
        timed_out = await translate(r, "late", order("es"))
        sim.set_create_faults()
        again = await translate(r, "late", order("es"))
        jobs = (await r.client.get("/jobs")).json()["items"]
    assert timed_out.status_code == 409, timed_out.text
    assert timed_out.json()["state"] == "unknown"
    assert (again.status_code, again.json()) == (409, timed_out.json())
    assert len(sim.creates) == 1 and len(sim.creates[0].ids) == 1  # Akool made one; we cannot know it
    assert jobs == []
    assert await kept_state(db_url, "late") == "unknown"
