"""Shared by the test_polling_*.py files."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from app.sandbox.simulator import RequestRecord, Simulator

TERMINAL = {"completed", "failed", "expired", "cancelled"}


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


async def register(client: httpx.AsyncClient, vid: str, hook_url: str, **extra: Any) -> dict[str, Any]:
    response = await client.post("/jobs", json={"video_model_id": vid, "callback_url": hook_url, **extra})
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
