"""The HTTP API of SPEC §3 over real HTTP, on SQLite and PostgreSQL: bad input.

Every bad input gets a 4xx whose body says what is wrong, never a 500. Every relay here is driven
(`driven=True`): nothing polls or delivers in the background, so only the requests a test sends touch
the database.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator

import pytest

from app import netguard
from tests.support.api import assert_detail, assert_field_error, assert_item_field_error, errors_of
from tests.support.relay import HOOK, RelayFactory, register

# -- POST /jobs: bad input ---------------------------------------------------------------------------


async def test_post_jobs_rejects_unknown_fields_and_wrong_types(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
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


BAD_IDS = ["a/b", "a b", "é", "x" * 65, "", "a.b", "a\nb", "日本"]


async def test_post_jobs_rejects_bad_ids(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
        for bad_id in BAD_IDS:
            resp = await r.client.post("/jobs", json={"video_model_id": bad_id, "callback_url": HOOK})
            assert resp.status_code == 422, (bad_id, resp.text)
            assert_field_error(resp, "video_model_id")
        assert (await r.client.get("/jobs")).json()["items"] == []


async def test_post_jobs_accepts_the_edges_of_the_id_alphabet(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
        for good in ["unknown-" + "x" * 56, "unknown_A-z_0-9", "unknown"]:
            assert len(good) <= 64
            job = await register(r, good)
            assert job["video_model_id"] == good


async def test_post_jobs_rejects_bad_callback_urls(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
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
    async with start_relay(driven=True) as r:
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
    async with start_relay(driven=True) as r:
        base = {"video_model_id": "unknown-e", "callback_url": HOOK}
        for events in [["completed", "exploded"], ["cancelled"], ["COMPLETED"], [], [1]]:
            assert_field_error(await r.client.post("/jobs", json={**base, "events": events}), "events")


async def test_post_jobs_rejects_a_body_that_is_not_json(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
        resp = await r.client.post("/jobs", content=b"{nope", headers={"content-type": "application/json"})
        detail = errors_of(resp)
        assert any("json" in (e["msg"] + e.get("type", "")).lower() for e in detail), detail
        resp = await r.client.post("/jobs", content=b"", headers={"content-type": "application/json"})
        assert 400 <= resp.status_code < 500, resp.text


async def test_post_jobs_rejects_a_body_over_2_mib(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
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

    async with start_relay(driven=True) as r:
        resp = await r.client.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert_detail(resp, 413)
        assert (await r.client.get("/jobs/unknown-chunked")).status_code == 404


async def test_batch_body_over_2_mib_is_413(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True) as r:
        jobs = [
            {"video_model_id": f"unknown-{i}", "callback_url": HOOK, "metadata": {"x": "y" * 3000}}
            for i in range(1000)
        ]
        resp = await r.client.post("/jobs/batch", json={"jobs": jobs})
        assert_detail(resp, 413)


# -- callbacks that are not public ---------------------------------------------------------------------


async def test_private_callback_is_refused_unless_allowed(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True, RELAY_ALLOW_PRIVATE_CALLBACKS=False) as r:
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
    async with start_relay(driven=True, RELAY_ALLOW_PRIVATE_CALLBACKS=False) as r:
        await register(r, "unknown-pub", public_hooks)
        resp = await r.client.patch("/jobs/unknown-pub", json={"callback_url": "http://127.0.0.1:9/x"})
        assert_field_error(resp, "callback_url")
        assert (await r.client.get("/jobs/unknown-pub")).json()["callback_url"] == public_hooks
        resp = await r.client.patch("/jobs/unknown-pub", json={"callback_url": public_hooks + "/v2"})
        assert resp.status_code == 200, resp.text
