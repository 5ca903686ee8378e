"""The test environment: which PostgreSQL, the settings every test relay starts from, one way to talk
to PostgreSQL directly."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa

from app.config import Settings, load_settings

PG_URL = os.environ.get("RELAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("RELAY_REQUIRE_POSTGRES") == "1"
WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test value, not a real secret

# Settings every relay in the tests starts from: fast ticks and short intervals (fractions of a second).
FAST: dict[str, Any] = {
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


def relay_settings(db_url: str, akool_url: str, **overrides: Any) -> Settings:
    """FAST + the database and Akool URLs + overrides (None removes a variable)."""
    env = {**FAST, "DATABASE_URL": db_url, "AKOOL_BASE_URL": akool_url, **overrides}
    values = {k: v for k, v in env.items() if v is not None}
    return load_settings(**values)


async def pg_connect(url: str = PG_URL, database: str | None = None) -> Any:
    """An asyncpg connection to `url` (or another database on the same server)."""
    import asyncpg

    u = sa.make_url(url)
    return await asyncpg.connect(
        host=u.host,
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        database=database or u.database,
        timeout=5,
    )


async def pg_exec(sql: str, database: str | None = None) -> None:
    conn = await pg_connect(database=database)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_url_for(database: str) -> str:
    return sa.make_url(PG_URL).set(database=database).render_as_string(hide_password=False)
