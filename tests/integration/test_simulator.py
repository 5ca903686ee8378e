"""The Akool simulator over real HTTP on loopback: lifecycle, auth, faults, recording, control endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import INFO_PATH, TOKEN_PATH, Simulator, SimulatorConfig, run_simulator


@contextlib.asynccontextmanager
async def running(
    config: SimulatorConfig | None = None,
) -> AsyncIterator[tuple[Simulator, httpx.AsyncClient]]:
    sim = Simulator(config)
    async with serve_in_background(sim.app) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        yield sim, client


async def info(client: httpx.AsyncClient, vid: str, **headers: str) -> dict[str, Any]:
    r = await client.get(INFO_PATH, params={"video_model_id": vid}, headers=headers)
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


async def test_lifecycle_queueing_processing_completed() -> None:
    async with running(SimulatorConfig(queue_seconds=0.1, process_seconds=0.2)) as (sim, client):
        before_ms = time.time() * 1000
        first = await info(client, "job-1")
        assert first["code"] == 1000 and first["msg"] == "OK"
        data = first["data"]
        assert data["video_status"] == 1 and data["progress"] == 0 and data["video"] == ""
        assert before_ms - 1000 <= data["create_time"] <= time.time() * 1000
        for key in ("_id", "uid", "team_id", "video_id", "type", "from", "deduction_duration", "storage_loc"):
            assert key in data

        await asyncio.sleep(0.12)
        progress = []
        while (data := (await info(client, "job-1"))["data"])["video_status"] == 2:
            assert data["video"] == ""
            progress.append(data["progress"])
            await asyncio.sleep(0.03)
        assert progress and progress == sorted(progress) and progress[0] >= 0 and progress[-1] < 100
        assert progress[-1] > progress[0]

        assert data["video_status"] == 3 and data["progress"] == 100
        assert data["video"] == "https://sim.akool.local/videos/job-1.mp4"
        splits = data["audio_splits"]
        assert set(splits) == {"original_srt_url", "translated_srt_url", "no_caption_video_url"}
        assert all(url.startswith("https://sim.akool.local/") for url in splits.values())
        assert "error_code" not in data
        assert data["create_time"] == first["data"]["create_time"] and data["_id"] == first["data"]["_id"]

        sent_at = sim.terminal_sent_at["job-1"]
        assert time.time() - 1 < sent_at <= time.time()
        assert (await info(client, "job-1"))["data"]["video_status"] == 3
        assert sim.terminal_sent_at["job-1"] == sent_at  # the first terminal answer only
        assert all(r.code == 1000 and r.http_status == 200 for r in sim.requests)
        assert sim.overlaps == {}


async def test_failure_path_and_script_overrides() -> None:
    async with running(SimulatorConfig(queue_seconds=0, process_seconds=0)) as (sim, client):
        data = (await info(client, "fail-7"))["data"]
        assert data["video_status"] == 4 and data["video"] == ""
        assert isinstance(data["error_code"], int) and 100000 <= data["error_code"] <= 999999
        assert data["error_reason"]
        assert "fail-7" in sim.terminal_sent_at

        sim.script("plain-1", outcome="failed")
        sim.script("fail-8", outcome="completed")
        assert (await info(client, "plain-1"))["data"]["video_status"] == 4
        assert (await info(client, "fail-8"))["data"]["video_status"] == 3

        sim.script("slowpoke", queue_seconds=10)
        assert (await info(client, "slowpoke"))["data"]["video_status"] == 1
        with pytest.raises(ValueError):
            sim.script("x", outcome="exploded")


async def test_unknown_ids_answer_1008_until_scripted() -> None:
    async with running(SimulatorConfig(queue_seconds=0, process_seconds=0)) as (sim, client):
        for vid in ("unknown-1", "missing-2", "unknown-1"):
            body = await info(client, vid)
            assert body["code"] == 1008 and "data" not in body and body["msg"]
        sim.script("ghost", outcome="unknown")
        assert (await info(client, "ghost"))["code"] == 1008
        sim.script("ghost", outcome="completed")  # it shows up later
        assert (await info(client, "ghost"))["data"]["video_status"] == 3
        assert sim.stats()["by_code"] == {"1008": 4, "1000": 1}


async def test_api_key_auth() -> None:
    async with running(SimulatorConfig(api_key="k-123")) as (_, client):
        assert (await info(client, "a"))["code"] == 1102
        wrong = await info(client, "a", **{"x-api-key": "nope"})
        assert wrong["code"] == 1101 and "data" not in wrong
        assert (await info(client, "a", **{"x-api-key": "k-123"}))["code"] == 1000
        # Bearer takes precedence over the key, and no token was issued
        both = await info(client, "a", **{"x-api-key": "k-123", "authorization": "Bearer forged"})
        assert both["code"] == 1101
        # with only a key configured, getToken hands out nothing
        r = await client.post(TOKEN_PATH, json={"clientId": "c", "clientSecret": "s"})
        assert r.json()["code"] == 1101


async def test_token_auth_revoke_and_refresh() -> None:
    config = SimulatorConfig(api_key="k", client_id="cid", client_secret="secret")
    async with running(config) as (sim, client):
        bad = await client.post(TOKEN_PATH, json={"clientId": "cid", "clientSecret": "wrong"})
        assert bad.status_code == 200 and bad.json()["code"] == 1101 and "token" not in bad.json()

        async def new_token() -> str:
            r = await client.post(TOKEN_PATH, json={"clientId": "cid", "clientSecret": "secret"})
            assert r.json()["code"] == 1000
            token: str = r.json()["token"]
            return token

        token = await new_token()
        assert (await info(client, "a", authorization=f"Bearer {token}"))["code"] == 1000
        assert (await info(client, "a", authorization="Bearer forged"))["code"] == 1101
        # Bearer wins even when a valid key comes along
        assert (await info(client, "a", authorization="Bearer forged", **{"x-api-key": "k"}))["code"] == 1101

        sim.revoke_tokens()
        assert (await info(client, "a", authorization=f"Bearer {token}"))["code"] == 1101
        fresh = await new_token()
        assert fresh != token
        assert (await info(client, "a", authorization=f"Bearer {fresh}"))["code"] == 1000
        assert sim.token_requests == 3


async def test_open_simulator_accepts_anything() -> None:
    async with running() as (_, client):
        assert (await info(client, "a"))["code"] == 1000
        assert (await info(client, "a", authorization="Bearer whatever"))["code"] == 1000
        r = await client.post(TOKEN_PATH, json={})
        assert r.json()["code"] == 1000 and r.json()["token"]


async def test_error_faults() -> None:
    async with running() as (sim, client):
        for fault in ("http_500", "bad_body", "throttle", "auth_failing"):
            if fault == "auth_failing":
                sim.auth_failing = True
            else:
                sim.set_faults(**{fault: 1.0})
            r = await client.get(INFO_PATH, params={"video_model_id": "job"})
            if fault == "http_500":
                assert r.status_code == 500 and r.headers["content-type"].startswith("text/plain")
            elif fault == "bad_body":
                assert r.status_code == 200 and r.text == "<html>oops</html>"
                assert r.headers["content-type"].startswith("text/html")
            else:
                expected = 1005 if fault == "throttle" else 1101
                assert r.status_code == 200 and r.json()["code"] == expected and "data" not in r.json()
            record = sim.requests[-1]
            assert record.video_model_id == "job" and record.http_status == r.status_code
            assert record.code == (r.json()["code"] if fault in ("throttle", "auth_failing") else None)

            sim.set_faults()
            sim.auth_failing = False
            assert (await info(client, "job"))["code"] == 1000

        sim.set_faults(throttle=0.5)  # probabilities apply per request
        codes = [(await info(client, "job"))["code"] for _ in range(20)]
        assert set(codes) == {1000, 1005}
        with pytest.raises(ValueError):
            sim.set_faults(http_500=1.5)


async def test_slow_fault_answers_normally_after_the_delay() -> None:
    async with running() as (sim, client):
        sim.slow_seconds = 0.15
        sim.set_faults(slow=1.0)
        started = time.monotonic()
        body = await info(client, "job")
        assert time.monotonic() - started >= 0.15
        assert body["code"] == 1000 and body["data"]["video_status"] == 1
        record = sim.requests[-1]
        assert record.ended - record.started >= 0.15


async def test_slow_answer_abandoned_by_client_leaves_no_overlap() -> None:
    async with running() as (sim, client):
        sim.slow_seconds = 5
        sim.set_faults(slow=1.0)
        with pytest.raises(httpx.ReadTimeout):
            await client.get(INFO_PATH, params={"video_model_id": "job"}, timeout=0.1)
        for _ in range(50):  # the hang-up is noticed within a poll step, not after slow_seconds
            if sim.stats()["in_flight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert sim.stats()["in_flight"] == 0
        assert sim.requests[-1].http_status == 499 and sim.requests[-1].code is None
        sim.set_faults()
        assert (await info(client, "job"))["code"] == 1000
        assert sim.overlaps == {}


async def test_concurrent_requests_for_one_id_are_recorded_as_overlaps() -> None:
    async with running(SimulatorConfig(latency=0.1)) as (sim, client):
        a, b, c = await asyncio.gather(info(client, "twin"), info(client, "twin"), info(client, "other"))
        assert a["code"] == b["code"] == c["code"] == 1000
        await info(client, "other")  # after the first one ended: not an overlap
        assert sim.overlaps == {"twin": 1}
        stats = sim.stats()
        assert stats["overlap_total"] == 1 and stats["in_flight"] == 0 and stats["requests"] == 4


async def test_request_rate() -> None:
    async with running() as (sim, client):
        assert sim.request_rate() == 0.0
        since = time.monotonic()
        for i in range(10):
            await info(client, f"job-{i}")
        elapsed = time.monotonic() - since
        rate = sim.request_rate(since)
        assert 10 / elapsed * 0.5 <= rate <= 10 / elapsed * 1.01
        assert sim.request_rate(time.monotonic() + 1) == 0.0
        assert sim.stats()["peak_rate_1s"] == 10


async def test_control_endpoints() -> None:
    config = SimulatorConfig(queue_seconds=0, process_seconds=0, client_id="cid", client_secret="s")
    async with running(config) as (sim, client):
        r = await client.post("/_sim/faults", json={"throttle": 1, "slow_seconds": 0.1, "latency": 0.01})
        assert r.status_code == 200 and r.json()["faults"]["throttle"] == 1
        assert sim.slow_seconds == 0.1 and sim.config.latency == 0.01
        token = (await client.post(TOKEN_PATH, json={"clientId": "cid", "clientSecret": "s"})).json()["token"]
        bearer = {"authorization": f"Bearer {token}"}
        assert (await info(client, "job", **bearer))["code"] == 1005

        assert (await client.post("/_sim/faults", json={"auth_failing": True})).status_code == 200
        assert (await info(client, "job", **bearer))["code"] == 1101
        assert (await client.post("/_sim/faults", json={"auth_failing": False})).status_code == 200
        assert (await info(client, "job", **bearer))["code"] == 1000
        assert (await client.post("/_sim/faults", json={"http_500": 2})).status_code == 422

        r = await client.post("/_sim/script", json={"video_model_id": "job-2", "outcome": "failed"})
        assert r.status_code == 200
        assert (await info(client, "job-2", **bearer))["data"]["video_status"] == 4
        bad = await client.post("/_sim/script", json={"video_model_id": "x", "outcome": "exploded"})
        assert bad.status_code == 422

        assert (await client.post("/_sim/revoke_tokens")).json() == {"revoked": 1}
        assert (await info(client, "job", **bearer))["code"] == 1101

        stats = (await client.get("/_sim/stats")).json()
        assert stats["requests"] == 5 and stats["token_requests"] == 1
        assert stats["by_code"] == {"1005": 1, "1101": 2, "1000": 2}
        assert set(stats["terminal_sent_at"]) == {"job", "job-2"} and stats["overlaps"] == {}

        reset = (await client.post("/_sim/reset_stats")).json()
        assert reset["requests"] == 0 and reset["token_requests"] == 0 and reset["terminal_sent_at"] == {}
        assert sim.requests == []


async def test_run_simulator_serves_until_cancelled() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    task = asyncio.create_task(run_simulator("127.0.0.1", port, SimulatorConfig(api_key="k")))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
            for _ in range(100):
                with contextlib.suppress(httpx.ConnectError):
                    body = await info(client, "job", **{"x-api-key": "k"})
                    break
                await asyncio.sleep(0.02)
            assert body["code"] == 1000 and body["data"]["video_status"] == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    assert task.done()
