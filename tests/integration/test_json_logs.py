"""`RELAY_LOG_FORMAT=json` end to end (issue 14 item 2): `akool-relay serve` as a real process.

The relay runs on a temporary SQLite file with distinctive secrets, polls the in-process simulator (which
demands the API key), delivers signed callbacks to an in-process receiver, answers a few API requests
(one with a wrong token), pauses and resumes polling while the simulator refuses the key for a moment,
and is stopped with SIGTERM. Then every line it wrote, on stdout and on stderr
(uvicorn's start-up, access and shutdown lines, the relay's own, alembic's), must parse as a JSON object
with time, level, logger and message, and no line may contain the API key, the token or the webhook
secret (in any of its encodings).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import Simulator, SimulatorConfig
from tests.support.procs import free_port, relay_command, relay_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

API_KEY = "sentinel-KEY-123"
TOKEN = "tok-SENTINEL-9"
WEBHOOK_KEY = b"json-logs SENTINEL webhook key!!"  # 32 bytes
assert len(WEBHOOK_KEY) == 32
WEBHOOK_B64 = base64.b64encode(WEBHOOK_KEY).decode()
WEBHOOK_SECRET = "whsec_" + WEBHOOK_B64
SECRETS = [
    API_KEY,
    TOKEN,
    WEBHOOK_SECRET,
    WEBHOOK_B64,
    WEBHOOK_B64.rstrip("="),
    base64.urlsafe_b64encode(WEBHOOK_KEY).decode(),
    WEBHOOK_KEY.decode(),
    "SENTINEL",  # in every secret above, and nowhere else in this run
]
FIELDS = ("time", "level", "logger", "message")
OUTCOMES = {"jl-done": "completed", "jl-fail": "failed"}


async def _wait_healthy(proc: asyncio.subprocess.Process, base_url: str, logs: Any) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"the relay exited with {proc.returncode} during start-up\n{logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"/healthz did not answer within 30 s\n{logs()}")
            await asyncio.sleep(0.05)


async def _wait_for_line(path: Path, text: str, logs: Any) -> None:
    deadline = time.monotonic() + 20
    while text not in await asyncio.to_thread(path.read_text):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} line within 20 s\n{logs()}")
        await asyncio.sleep(0.05)


def _parse(name: str, text: str) -> list[dict[str, Any]]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{name} line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), f"{name} line {number}: {line!r}"
        missing = [f for f in FIELDS if not isinstance(entry.get(f), str)]
        assert not missing, f"{name} line {number} lacks {missing}: {line!r}"
        entries.append(entry)
    return entries


async def test_serve_with_json_logs_writes_only_json_and_no_secret(tmp_path: Path) -> None:
    sim = Simulator(SimulatorConfig(queue_seconds=0.2, process_seconds=0.4, api_key=API_KEY))
    for vid, outcome in OUTCOMES.items():
        sim.script(vid, outcome=outcome, queue_seconds=0.2, process_seconds=0.3)
    sim.auth_failing = True  # until the relay has logged the pause
    rec = Receiver(secret=WEBHOOK_SECRET)
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"

    def logs() -> str:
        return f"--- stdout:\n{out_path.read_text()}\n--- stderr:\n{err_path.read_text()}"

    async with serve_in_background(sim.app) as sim_url, serve_in_background(rec.app) as rec_url:
        port = free_port()
        env = relay_env(
            f"sqlite:///{tmp_path}/r.db",
            sim_url,
            RELAY_PORT=port,
            RELAY_LOG_FORMAT="json",
            AKOOL_API_KEY=API_KEY,
            RELAY_API_TOKENS=TOKEN,
            RELAY_WEBHOOK_SECRET=WEBHOOK_SECRET,
        )
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *relay_command(),
                env=env,
                cwd=tmp_path,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        try:
            base_url = f"http://127.0.0.1:{port}"
            await _wait_healthy(proc, base_url, logs)
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
                wrong = await client.get("/jobs", headers={"Authorization": "Bearer tok-wrong"})
                assert wrong.status_code == 401, wrong.text
                assert (await client.get("/jobs")).status_code == 401
                for vid in OUTCOMES:
                    body = {
                        "video_model_id": vid,
                        "callback_url": rec.url(rec_url),
                        "events": ["processing", "completed", "failed"],
                    }
                    created = await client.post("/jobs", json=body, headers=auth)
                    assert created.status_code == 201, created.text
                # Akool refuses the key for a moment: the poller pauses, then resumes (two log sites).
                await _wait_for_line(err_path, "polling paused", logs)
                sim.auth_failing = False
                await rec.wait_for(
                    lambda r: (
                        {
                            x.body["data"]["video_model_id"]
                            for x in r.accepted
                            if x.type in ("job.completed", "job.failed")
                        }
                        >= set(OUTCOMES)
                    ),
                    timeout=30,
                )
                assert all(r.verified for r in rec.accepted)
                for vid, outcome in OUTCOMES.items():
                    job = await client.get(f"/jobs/{vid}", headers=auth)
                    assert job.status_code == 200 and job.json()["status"] == outcome, job.text
                assert (await client.get("/jobs", headers=auth)).status_code == 200
                assert (await client.get("/metrics")).status_code == 200
                assert (await client.get("/no-such-page")).status_code == 404
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert code == 0, logs()

    stdout, stderr = out_path.read_text(), err_path.read_text()
    entries = _parse("stdout", stdout) + _parse("stderr", stderr)
    for secret in SECRETS:
        for name, text in (("stdout", stdout), ("stderr", stderr)):
            assert secret not in text, f"{secret!r} appears in the relay's {name}"

    # The lines are there, from every source: uvicorn's server and access loggers and the relay's own.
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers, sorted(loggers)
    poller = [(e["level"], e["message"]) for e in entries if e["logger"] == "app.worker.poller"]
    assert any(level == "WARNING" and "polling paused" in m for level, m in poller), poller
    assert any(level == "INFO" and "polling resumed" in m for level, m in poller), poller
    access = [e["message"] for e in entries if e["logger"] == "uvicorn.access"]
    assert any('"GET /jobs HTTP/1.1" 401' in m for m in access), access
    assert any('"POST /jobs HTTP/1.1" 201' in m for m in access), access
    server = " | ".join(e["message"] for e in entries if e["logger"] == "uvicorn.error")
    assert "Uvicorn running on" in server and "Shutting down" in server, server
    levels = {e["level"] for e in entries}
    assert levels <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, levels
