"""Relays as real processes (`akool-relay serve`) for the crash and multi-replica tests.

The simulator and the receiver run inside the pytest process (app.sandbox.serving.serve_in_background); the
relay subprocesses reach them over loopback HTTP. Everything here waits with asyncio, never with a
blocking sleep, so those in-process servers keep answering while a test waits on a relay.

- `relay_env(db_url, akool_url, **overrides)`: the environment of one relay (conftest's FAST settings).
- `RelayProcs(tmp_path)`: an async context manager that starts relays (`start(name, env)`) and, on
  exit, SIGKILLs whatever is still running, so no test leaves a process behind.
- `RelayProcess`: one relay; `start()` waits for /healthz, `kill()` sends SIGKILL, `terminate()` sends
  SIGTERM and returns (exit code, seconds to exit); stdout and stderr go to `log_path`, appended on
  every (re)start, so a test can grep them.
- `fetch(db_url, sql)`: rows straight from the relay's database (SQLite file or PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import sqlalchemy as sa

from tests.support.env import FAST, pg_connect

# Variables of the outer environment that must not leak into a relay under test.
_OWN_PREFIXES = ("RELAY_", "AKOOL_", "DATABASE_URL")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def relay_env(db_url: str, akool_url: str, **overrides: Any) -> dict[str, str]:
    """FAST settings + DATABASE_URL + AKOOL_BASE_URL + overrides (None removes a variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    settings: dict[str, Any] = {
        **FAST,
        "DATABASE_URL": db_url,
        "AKOOL_BASE_URL": akool_url,
        "RELAY_HOST": "127.0.0.1",
        "RELAY_ALLOW_PRIVATE_CALLBACKS": True,
        **overrides,
    }
    env.update({k: _env_value(v) for k, v in settings.items() if v is not None})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def relay_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m app.cli`."""
    script = Path(sys.executable).parent / "akool-relay"
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "app.cli", "serve"]


class RelayProcess:
    def __init__(self, name: str, env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        assert self.port is not None, f"{self.name} was never started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def client(self, timeout: float = 30) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    async def start(self, timeout: float = 30) -> None:
        """Start `akool-relay serve` on a free port; returns once /healthz answers 200."""
        assert not self.alive, f"{self.name} is already running"
        last_error: str = ""
        for _ in range(3):  # a free port can be taken between our probe and the relay's bind
            self.port = free_port()
            self.env["RELAY_PORT"] = str(self.port)
            self.starts += 1
            with self.log_path.open("ab") as log:
                log.write(f"=== {self.name}: start #{self.starts} on port {self.port}\n".encode())
                log.flush()
                self.proc = await asyncio.create_subprocess_exec(
                    *relay_command(),
                    env=self.env,
                    cwd=self.cwd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # our signals go to this process only
                )
            try:
                await self._wait_healthy(timeout)
                return
            except _ExitedEarly as exc:
                last_error = str(exc)
                if "address already in use" not in self.tail(20).lower():
                    break
        raise RuntimeError(f"{self.name} did not start: {last_error}\n--- log tail:\n{self.tail()}")

    async def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as client:
            while True:
                if self.proc.returncode is not None:
                    raise _ExitedEarly(f"exited with {self.proc.returncode} during start-up")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    await self.kill()
                    raise RuntimeError(
                        f"{self.name}: /healthz did not answer within {timeout} s\n{self.tail()}"
                    )
                await asyncio.sleep(0.05)

    async def kill(self) -> int | None:
        """SIGKILL and reap; returns the exit code (-9), or None when it was not running."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        return await self.proc.wait()

    async def terminate(self, timeout: float = 30) -> tuple[int | None, float]:
        """SIGTERM; (exit code, seconds until it exited). After `timeout` it is SIGKILLed: (None, timeout)."""
        assert self.proc is not None and self.proc.returncode is None, f"{self.name} is not running"
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            return None, time.monotonic() - started
        return code, time.monotonic() - started

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample family from /metrics, filtered by labels."""
        async with self.client(timeout=10) as client:
            text = (await client.get("/metrics")).text
        return metric_sum(text, name, **labels)


class _ExitedEarly(RuntimeError):
    pass


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{(?P<labels>[^}}]*)\}})?\s+(?P<value>\S+)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if m is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels") or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group("value"))
    return total


class RelayProcs:
    """Starts relays under `tmp_path` and makes sure none outlives the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.relays: list[RelayProcess] = []

    async def start(self, name: str, env: dict[str, str], timeout: float = 30) -> RelayProcess:
        relay = RelayProcess(name, env, self.dir / f"{name}.log", cwd=self.dir)
        self.relays.append(relay)
        await relay.start(timeout)
        return relay

    async def __aenter__(self) -> RelayProcs:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for relay in self.relays:
            await relay.kill()
        if exc is not None:
            for relay in self.relays:
                print(f"\n--- {relay.name} log tail ({relay.log_path}):\n{relay.tail(30)}")


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.05,
) -> float:
    """Wait (asyncio) until check() holds; returns the seconds it took, fails the test after `timeout`."""
    started = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {detail}")
        await asyncio.sleep(interval)


async def fetch(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` from the relay's database, read directly (not through a relay)."""
    url = sa.make_url(db_url)
    if url.get_backend_name() == "sqlite":
        path = url.database
        assert path, db_url

        def read() -> list[tuple[Any, ...]]:
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
                return [tuple(r) for r in conn.execute(sql).fetchall()]

        return await asyncio.to_thread(read)
    conn = await pg_connect(db_url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


# -- what the relay stored and what the receiver got ------------------------------------------------

TERMINAL_SQL = "('completed', 'failed', 'expired', 'cancelled')"


async def register_batch(
    relay: RelayProcess, video_model_ids: list[str], callback_url: str, events: list[str]
) -> None:
    """POST /jobs/batch through `relay`; every item must be 201."""
    jobs = [{"video_model_id": v, "callback_url": callback_url, "events": events} for v in video_model_ids]
    async with relay.client() as client:
        response = await client.post("/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 200, response.text
    statuses = [r["status"] for r in response.json()["results"]]
    assert statuses == [201] * len(jobs), f"batch through {relay.name}: {statuses}"


async def settled(db_url: str, jobs: int) -> bool:
    """All `jobs` are terminal and no event is still waiting to be delivered."""
    [(terminal,)] = await fetch(db_url, f"SELECT count(*) FROM job WHERE status IN {TERMINAL_SQL}")
    [(undelivered,)] = await fetch(
        db_url, "SELECT count(*) FROM event WHERE state IN ('pending', 'retrying')"
    )
    return bool(terminal == jobs and undelivered == 0)


async def terminal_count(db_url: str) -> int:
    [(terminal,)] = await fetch(db_url, f"SELECT count(*) FROM job WHERE status IN {TERMINAL_SQL}")
    return int(terminal)


async def verify_relayed(
    db_url: str, receiver: Any, outcomes: dict[str, str], events: list[str]
) -> tuple[list[str], dict[str, int]]:
    """Compare the database with what the receiver accepted; returns (problems, figures).

    Checks: every job has its expected terminal status; every event row is `delivered` and its
    webhook-id was accepted by the receiver (signature verified); the receiver accepted nothing the
    relay did not write; per job, the events are exactly one per state change the relay recorded
    that the job subscribed to, and always include the terminal one.
    """
    jobs = dict(await fetch(db_url, "SELECT video_model_id, status FROM job"))
    rows = await fetch(
        db_url,
        "SELECT e.webhook_id, j.video_model_id, e.type, e.state,"
        " (SELECT count(*) FROM attempt a WHERE a.event_id = e.id)"
        " FROM event e JOIN job j ON j.id = e.job_id",
    )
    transitions: dict[str, list[str]] = {}
    for vid, to_status in await fetch(
        db_url, "SELECT j.video_model_id, t.to_status FROM transition t JOIN job j ON j.id = t.job_id"
    ):
        transitions.setdefault(vid, []).append(to_status)
    unique = receiver.unique()
    problems: list[str] = []

    def problem(text: str) -> None:
        if len(problems) < 20:
            problems.append(text)
        elif len(problems) == 20:
            problems.append("… (more)")

    for vid, outcome in outcomes.items():
        if jobs.get(vid) != outcome:
            problem(f"{vid}: status {jobs.get(vid)!r}, expected {outcome!r}")
    db_ids = set()
    db_types: dict[str, list[str]] = {}
    for webhook_id, vid, type_, state, _attempts in rows:
        db_ids.add(webhook_id)
        db_types.setdefault(vid, []).append(type_)
        if state != "delivered":
            problem(f"{vid}: event {type_} {webhook_id} is {state!r}, not delivered")
        if webhook_id not in unique:
            problem(f"{vid}: event {type_} {webhook_id} never reached the receiver")
    for webhook_id, received in unique.items():
        if webhook_id not in db_ids:
            problem(f"receiver got {webhook_id} ({received.type}) that the relay never wrote")
    unverified = [r.webhook_id for r in receiver.accepted if not r.verified]
    if unverified:
        problem(f"{len(unverified)} accepted callbacks with unverified signatures: {unverified[:3]}")
    received_types: dict[str, list[str]] = {}
    for received in unique.values():
        received_types.setdefault(received.body["data"]["video_model_id"], []).append(received.type)
    skipped_processing = 0
    for vid, outcome in outcomes.items():
        expected = sorted(f"job.{s}" for s in transitions.get(vid, []) if s in events)
        if "processing" in events and "processing" not in transitions.get(vid, []):
            skipped_processing += 1
        if sorted(db_types.get(vid, [])) != expected:
            problem(f"{vid}: events written {sorted(db_types.get(vid, []))}, state changes say {expected}")
        if sorted(received_types.get(vid, [])) != expected:
            problem(f"{vid}: received {sorted(received_types.get(vid, []))}, expected {expected}")
        if f"job.{outcome}" not in received_types.get(vid, []):
            problem(f"{vid}: the terminal job.{outcome} callback never arrived")
    figures = {
        "jobs": len(jobs),
        "events": len(rows),
        "attempts": sum(r[4] for r in rows),
        "accepted": len(receiver.accepted),
        "unique": len(unique),
        "duplicates": receiver.duplicates(),
        "processing_not_observed": skipped_processing,
    }
    return problems, figures
