"""Alembic's migrations give exactly the schema of the models, on SQLite and PostgreSQL, both ways."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers the tables)
from app.db import async_url
from app.migrate import downgrade_to, upgrade_to_head


def _diff(url: str) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_async_engine(async_url(url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}), SQLModel.metadata
                    )
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _tables(url: str) -> set[str]:
    async def run() -> set[str]:
        engine = create_async_engine(async_url(url))
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_migrated_schema_equals_the_models(db_url: str) -> None:
    # db_url is already migrated to head by the fixture.
    assert _diff(db_url) == []
    assert {"job", "transition", "event", "attempt", "setting", "upstream_health"} <= _tables(db_url)


def test_downgrade_and_upgrade_round_trip(db_url: str) -> None:
    downgrade_to(db_url, "base")
    assert _tables(db_url) <= {"alembic_version"}
    upgrade_to_head(db_url)
    assert _diff(db_url) == []
