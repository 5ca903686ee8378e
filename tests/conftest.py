"""Shared fixtures: real databases (SQLite files, PostgreSQL), the simulator, a receiver, the relay.

Every test that touches storage runs twice: `db_url` is parametrized over a fresh SQLite file and a
fresh PostgreSQL database copied from a migrated template (`CREATE DATABASE … TEMPLATE`). Without a
server the PostgreSQL half is skipped with the reason; RELAY_REQUIRE_POSTGRES=1 turns that into a
failure. Helpers live in tests/support/.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.migrate import upgrade_to_head
from app.models import utcnow
from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import ManualClock, Simulator, SimulatorConfig
from tests.support.env import (
    PG_URL,
    REQUIRE_PG,
    WEBHOOK_SECRET,
    pg_connect,
    pg_exec,
    pg_url_for,
    relay_settings,
)
from tests.support.relay import RelayFactory, RunningRelay

TEMPLATE = f"relay_test_template_{os.getpid()}"  # per run: parallel runs must not share it


def _pg_available() -> str | None:
    """None when the server answers, else why not."""

    async def probe() -> None:
        conn = await pg_connect()
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database, made once per run."""
    reason = _pg_available()
    if reason is not None:
        if REQUIRE_PG:
            pytest.fail(f"RELAY_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    asyncio.run(pg_exec(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)'))
    asyncio.run(pg_exec(f'CREATE DATABASE "{TEMPLATE}"'))
    upgrade_to_head(pg_url_for(TEMPLATE))
    yield TEMPLATE
    asyncio.run(pg_exec(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, made once per run and copied for each test."""
    path = tmp_path_factory.mktemp("template") / "relay.db"
    upgrade_to_head(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "relay.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    yield request.getfixturevalue("pg_db_url")


@pytest.fixture
def pg_db_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database (a copy of the session's template)."""
    name = f"relay_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield pg_url_for(name)
    asyncio.run(pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[Simulator, str]]:
    sim = Simulator(SimulatorConfig(queue_seconds=0.2, process_seconds=0.4, api_key="test-key"))
    async with serve_in_background(sim.app) as base_url:
        yield sim, base_url


@pytest.fixture
def sim_clock() -> ManualClock:
    """The simulator's job clock: a job's lifecycle moves only on `sim_clock.advance(seconds)`."""
    return ManualClock()


@pytest.fixture
def relay_clock(sim_clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Callable[[], datetime]:
    """The relay's clock for polls and registrations, moving with `sim_clock` (from the real now)."""
    base = utcnow()

    def now() -> datetime:
        return base + timedelta(seconds=sim_clock.now)

    for module in ("app.worker.poller", "app.store.jobs"):
        monkeypatch.setattr(f"{module}.utcnow", now)
    return now


@pytest.fixture
async def stepped_simulator(
    simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> tuple[Simulator, str]:
    """The `simulator`, on `sim_clock`: queueing for 0.2 s, processing for 0.4 s of that clock."""
    simulator[0].clock = sim_clock
    return simulator


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver(secret=WEBHOOK_SECRET)
    async with serve_in_background(rec.app) as base_url:
        yield rec, rec.url(base_url)


@pytest.fixture
def start_relay(db_url: str, simulator: tuple[Simulator, str]) -> RelayFactory:
    """start_relay(**env overrides) → a relay served on loopback, with an httpx client for its API.

    `driven=True`: its loops do nothing by themselves; the test steps them with
    `r.relay.poll_due_jobs()` and `r.relay.deliver_due()` (pair it with `stepped_simulator`).
    """

    @asynccontextmanager
    async def start(*, driven: bool = False, **overrides: Any) -> AsyncIterator[RunningRelay]:
        settings = relay_settings(db_url, simulator[1], **overrides)
        app = create_app(settings, driven=driven)
        async with serve_in_background(app) as base_url:
            headers = {}
            if settings.api_tokens:
                headers["authorization"] = f"Bearer {settings.api_token_values[0]}"
            async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
                yield RunningRelay(app.state.runtime, client, base_url, settings)

    return start
