"""POST /translations across a SIGKILL (issue 10): Akool is never asked twice for one key.

A real `akool-relay serve` is killed after the simulator got the create: while the create is still at
the simulator, and after the simulator answered but before the relay could commit (the test holds the
database lock the commit needs). After a restart on the same database the retried key answers 409
`unknown`, and the simulator saw exactly one create.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.models import DEFAULT_TENANT_ID
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import CREATE_PATH, Simulator, SimulatorConfig
from app.store.creates import tenant_key
from tests.support.env import pg_connect
from tests.support.procs import RelayProcess, RelayProcs, fetch, relay_env, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KEY = "crash-key-1"
ROW_KEY = tenant_key(DEFAULT_TENANT_ID, KEY)  # the row the default tenant's key is kept in
ORDER = {
    "akool": {"url": "https://example.com/source.mp4", "language": "es,fr"},
    "callback_url": "http://127.0.0.1:9/hook",
}
AKOOL_TIMEOUT = 5.0  # the relay's RELAY_AKOOL_TIMEOUT: it is killed well within it
WINDOW = AKOOL_TIMEOUT + 2.0  # after this a key left in_progress is answered `unknown` (+ its commit grace)


class AnsweredCreates:
    """ASGI wrapper of the simulator that notes when an answer to a create has been sent in full."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.answered = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != CREATE_PATH:
            await self.app(scope, receive, send)
            return

        async def noting_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.answered.set()

        await self.app(scope, receive, noting_send)


@contextlib.asynccontextmanager
async def akool() -> AsyncIterator[tuple[Simulator, AnsweredCreates, str]]:
    sim = Simulator(SimulatorConfig(queue_seconds=0.5, process_seconds=1.0, api_key="test-key"))
    app = AnsweredCreates(sim.app)
    async with serve_in_background(app) as base_url:
        yield sim, app, base_url


async def retry(relay: RelayProcess) -> httpx.Response:
    async with relay.client(timeout=10) as client:
        return await client.post("/translations", json=ORDER, headers={"Idempotency-Key": KEY})


async def send_and_kill_when(relay: RelayProcess, ready: Any) -> None:
    """POST the create through `relay`; SIGKILL it once `ready()` holds; the POST never gets an answer."""

    async def post() -> httpx.Response:
        async with relay.client(timeout=30) as client:
            return await client.post("/translations", json=ORDER, headers={"Idempotency-Key": KEY})

    request = asyncio.create_task(post())
    try:
        await wait_until(ready, 10, "the moment to kill the relay")
        assert not request.done(), f"the relay answered before it was killed: {request.result().text}"
        assert await relay.kill() == -9
    finally:
        with contextlib.suppress(httpx.HTTPError):
            await request


async def expect_unknown_after_restart(relay: RelayProcess, sim: Simulator) -> list[tuple[int, str]]:
    """Restart, retry the key until the window of the killed call has passed; every answer is a 409
    and Akool is never asked again. Returns the (status, state) answers seen."""
    await relay.start()
    seen: list[tuple[int, str]] = []

    async def unknown() -> bool:
        answer = await retry(relay)
        seen.append((answer.status_code, answer.json().get("state", answer.text)))
        return seen[-1] == (409, "unknown")

    await wait_until(unknown, WINDOW + 10, lambda: f"409 unknown; answers so far: {seen}", interval=0.25)
    for _ in range(3):
        assert await unknown()
    assert {state for _, state in seen} <= {"in_progress", "unknown"}, seen
    assert {status for status, _ in seen} == {409}, seen
    assert len(sim.creates) == 1
    return seen


def env(db_url: str, akool_url: str) -> dict[str, str]:
    return relay_env(db_url, akool_url, RELAY_AKOOL_TIMEOUT=AKOOL_TIMEOUT)


async def test_killed_while_akool_makes_the_jobs_the_key_answers_unknown(db_url: str, tmp_path: Path) -> None:
    async with akool() as (sim, _, akool_url), RelayProcs(tmp_path) as procs:
        sim.set_create_faults(delay=3.0)  # the jobs are made at once; the answer comes 3 s later
        relay = await procs.start("relay", env(db_url, akool_url))
        await send_and_kill_when(relay, lambda: len(sim.creates) == 1)
        assert len(sim.creates[0].ids) == 2  # Akool made (and would charge) both
        assert await fetch(db_url, f"SELECT state FROM akool_create WHERE key = '{ROW_KEY}'") == [
            ("in_progress",)
        ]
        seen = await expect_unknown_after_restart(relay, sim)
        async with relay.client() as client:
            jobs = (await client.get("/jobs")).json()["items"]
    assert jobs == []  # we cannot know them: the client is told `unknown`, never a second create
    assert seen[-1] == (409, "unknown")


async def test_killed_between_akools_answer_and_the_commit_the_key_answers_unknown(
    db_url: str, tmp_path: Path
) -> None:
    async with akool() as (sim, answers, akool_url), RelayProcs(tmp_path) as procs:
        sim.set_create_faults(delay=0.5)
        relay = await procs.start("relay", env(db_url, akool_url))
        async with holding_the_commit(db_url) as hold:

            async def answered_and_blocked() -> bool:
                if len(sim.creates) == 1 and not hold.held:
                    await hold.take()  # the key's row is committed; the next write of it waits for us
                return answers.answered.is_set() and await hold.relay_waits()

            await send_and_kill_when(relay, answered_and_blocked)
        # Akool answered with both ids; the relay died before it could keep them.
        assert len(sim.creates[0].ids) == 2
        assert await fetch(db_url, f"SELECT state FROM akool_create WHERE key = '{ROW_KEY}'") == [
            ("in_progress",)
        ]
        assert await fetch(db_url, "SELECT count(*) FROM job") == [(0,)]
        await expect_unknown_after_restart(relay, sim)
        async with relay.client() as client:
            for vid in sim.creates[0].ids:
                assert (await client.get(f"/jobs/{vid}")).status_code == 404


class CommitHold:
    """Holds what the relay's commit of the key needs: SQLite's write lock, or PostgreSQL's row lock."""

    def __init__(self, db_url: str) -> None:
        self.url = sa.make_url(db_url)
        self.held = False
        self._pg: Any = None
        self._release = threading.Event()
        self._thread: threading.Thread | None = None
        self._taken = threading.Event()

    async def take(self) -> None:
        if self.url.get_backend_name() == "sqlite":
            self._thread = threading.Thread(target=self._hold_sqlite, daemon=True)
            self._thread.start()
            await asyncio.to_thread(self._taken.wait, 10)
            assert self._taken.is_set(), "could not take SQLite's write lock"
        else:
            self._pg = await pg_connect(self.url.render_as_string(hide_password=False))
            await self._pg.execute("BEGIN")
            await self._pg.execute("SELECT key FROM akool_create WHERE key = $1 FOR UPDATE", ROW_KEY)
        self.held = True

    def _hold_sqlite(self) -> None:
        assert self.url.database
        conn = sqlite3.connect(self.url.database, timeout=10, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._taken.set()
            self._release.wait(60)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    async def relay_waits(self) -> bool:
        """Whether the relay is now blocked on us. PostgreSQL shows it; SQLite's waiter cannot be
        seen, so there it is assumed half a second after Akool's answer went out."""
        if self._pg is None:
            await asyncio.sleep(0.5)
            return True
        waiting = await self._pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return bool(waiting)

    async def release(self) -> None:
        if self._pg is not None:
            await self._pg.execute("ROLLBACK")
            await self._pg.close()
        self._release.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)


@contextlib.asynccontextmanager
async def holding_the_commit(db_url: str) -> AsyncIterator[CommitHold]:
    hold = CommitHold(db_url)
    try:
        yield hold
    finally:
        await hold.release()
