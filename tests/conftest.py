"""Shared fixtures: real databases (SQLite files, PostgreSQL), the simulator, a receiver, the relay.

Every test that touches storage runs twice: `db_url` is parametrized over a fresh SQLite file and a
fresh PostgreSQL database copied from a migrated template (`CREATE DATABASE … TEMPLATE`). Without a
server the PostgreSQL half is skipped with the reason; RELAY_REQUIRE_POSTGRES=1 turns that into a
failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.config import Settings, load_settings
from app.main import create_app
from app.migrate import upgrade_to_head
from app.sandbox.receiver import Receiver
from app.runtime import Runtime
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import Simulator, SimulatorConfig

PG_URL = os.environ.get("RELAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("RELAY_REQUIRE_POSTGRES") == "1"
TEMPLATE = f"relay_test_template_{os.getpid()}"  # per run: parallel runs must not share it
WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test value, not a real secret

# Settings every relay in the tests starts from: fast ticks and short intervals (fractions of a second).
FAST = {
    "RELAY_TICK_INTERVAL": 0.05,
    "RELAY_POLL_INTERVAL_MIN": 0.1,
    "RELAY_POLL_INTERVAL_MAX": 0.3,
    "RELAY_RETRY_SCHEDULE": "0.1,0.1,0.1",
    "RELAY_ALLOW_PRIVATE_CALLBACKS": True,
    "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "RELAY_AKOOL_RATE_LIMIT": 1000,
    "RELAY_DELIVERY_TIMEOUT": 2,
    "RELAY_AKOOL_TIMEOUT": 1,
    "RELAY_LEASE_SECONDS": 5,
    "AKOOL_API_KEY": "test-key",
}


def _pg_available() -> str | None:
    """None when the server answers, else why not."""

    async def probe() -> None:
        import asyncpg

        u = sa.make_url(PG_URL)
        conn = await asyncpg.connect(
            host=u.host,
            port=u.port or 5432,
            user=u.username,
            password=u.password,
            database=u.database,
            timeout=3,
        )
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__}: {exc})"
    return None


async def _pg_exec(sql: str, database: str | None = None) -> None:
    import asyncpg

    u = sa.make_url(PG_URL)
    conn = await asyncpg.connect(
        host=u.host,
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        database=database or u.database,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_url_for(database: str) -> str:
    return sa.make_url(PG_URL).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database, made once per run."""
    reason = _pg_available()
    if reason is not None:
        if REQUIRE_PG:
            pytest.fail(f"RELAY_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)'))
    asyncio.run(_pg_exec(f'CREATE DATABASE "{TEMPLATE}"'))
    upgrade_to_head(_pg_url_for(TEMPLATE))
    yield TEMPLATE
    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)'))


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
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield _pg_url_for(name)
    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[Simulator, str]]:
    sim = Simulator(SimulatorConfig(queue_seconds=0.2, process_seconds=0.4, api_key="test-key"))
    async with serve_in_background(sim.app) as base_url:
        yield sim, base_url


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver(secret=WEBHOOK_SECRET)
    async with serve_in_background(rec.app) as base_url:
        yield rec, rec.url(base_url)


@dataclass
class RunningRelay:
    relay: Runtime
    client: httpx.AsyncClient
    base_url: str
    settings: Settings


RelayFactory = Callable[..., AbstractAsyncContextManager[RunningRelay]]


def relay_settings(db_url: str, akool_url: str, **overrides: Any) -> Settings:
    env = {**FAST, "DATABASE_URL": db_url, "AKOOL_BASE_URL": akool_url, **overrides}
    values = {k: v for k, v in env.items() if v is not None}
    return load_settings(**values)


@pytest.fixture
def start_relay(db_url: str, simulator: tuple[Simulator, str]) -> RelayFactory:
    """start_relay(**env overrides) → a relay served on loopback, with an httpx client for its API."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RunningRelay]:
        settings = relay_settings(db_url, simulator[1], **overrides)
        app = create_app(settings)
        async with serve_in_background(app) as base_url:
            headers = {}
            if settings.api_tokens:
                headers["authorization"] = f"Bearer {settings.api_token_values[0]}"
            async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
                yield RunningRelay(app.state.runtime, client, base_url, settings)

    return start


async def wait_job(
    client: httpx.AsyncClient,
    video_model_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10,
) -> dict[str, Any]:
    """Poll the relay's API until the job satisfies predicate; returns the job detail."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job: dict[str, Any] = (await client.get(f"/jobs/{video_model_id}")).json()
        if predicate(job):
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job never reached the expected state: {job}")
        await asyncio.sleep(0.05)
