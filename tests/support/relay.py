"""A relay under test, served on loopback, and what tests do with it: register, wait, read back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from app.config import Settings
from app.runtime import Runtime
from app.sandbox.simulator import RequestRecord, Simulator

HOOK = "http://127.0.0.1:9/hook"  # never called: jobs using it stay pending
TERMINAL = {"completed", "failed", "expired", "cancelled"}

# For driven relays: polls planned 1 ms ahead, so a job a step left unfinished is due at the next step.
DUE_AT_ONCE: dict[str, Any] = {"RELAY_POLL_INTERVAL_MIN": 0.001, "RELAY_POLL_INTERVAL_MAX": 0.001}
LATER = 0.002  # seconds: past anything planned 0.001 s ahead, jitter (±10 %) included
PAST_THE_END = 1.0  # simulated seconds: past the default queueing (0.2 s) and processing (0.4 s)


@dataclass
class RunningRelay:
    relay: Runtime
    client: httpx.AsyncClient
    base_url: str
    settings: Settings


RelayFactory = Callable[..., AbstractAsyncContextManager[RunningRelay]]


async def register(
    r: RunningRelay, video_model_id: str, callback_url: str = HOOK, **extra: Any
) -> dict[str, Any]:
    """POST /jobs; it must answer 201. Returns the job."""
    response = await r.client.post(
        "/jobs", json={"video_model_id": video_model_id, "callback_url": callback_url, **extra}
    )
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def summary(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/jobs")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()["summary"]
    return body


def requests_for(sim: Simulator, vid: str) -> list[RequestRecord]:
    return [r for r in sim.requests if r.video_model_id == vid]


def path(job: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["from"], t["to"]) for t in job["transitions"]]


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    explain: Callable[[], Awaitable[Any]] | None = None,
) -> None:
    """Wait until predicate() is true (it may be a coroutine function); fail naming `what`, with
    what `explain()` says about the state at that moment."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            state = f"; {await explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{state}")
        await asyncio.sleep(0.02)


async def wait_job(
    client: httpx.AsyncClient,
    video_model_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10,
) -> dict[str, Any]:
    """Poll the relay's API until the job satisfies predicate; returns the job detail."""
    job: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal job
        job = (await client.get(f"/jobs/{video_model_id}")).json()
        return predicate(job)

    async def explain() -> str:
        return f"the job is {job}"

    await wait_until(reached, timeout, f"job {video_model_id} to reach the expected state", explain)
    return job


async def poll(r: RunningRelay) -> int:
    """One poll step (poll_due_jobs), once what the last step planned 1 ms ahead is due."""
    await asyncio.sleep(LATER)
    return await r.relay.poll_due_jobs()


async def deliver(r: RunningRelay) -> int:
    """One delivery step (deliver_due), once what the last step planned 1 ms ahead is due."""
    await asyncio.sleep(LATER)
    return await r.relay.deliver_due()


async def drain(r: RunningRelay, limit: int = 50) -> int:
    """Delivery steps until nothing is due (every event delivered or dead); returns how many were sent."""
    sent = 0
    for _ in range(limit):
        if not (n := await deliver(r)):
            return sent
        sent += n
    raise AssertionError(f"events were still due after {limit} delivery steps")


async def step(r: RunningRelay, rounds: int = 1) -> None:
    """Run the driven relay's loops once each, `rounds` times: poll what is due, deliver what is due."""
    for _ in range(rounds):
        await poll(r)
        await deliver(r)


async def detail(r: RunningRelay, video_model_id: str) -> dict[str, Any]:
    """GET /jobs/{id}; it must answer 200. Returns the job with its transitions and deliveries."""
    response = await r.client.get(f"/jobs/{video_model_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def sleep_until(moment: datetime) -> None:
    """The relay's clock is the wall clock: wait until it has passed `moment`."""
    await asyncio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()) + LATER)
