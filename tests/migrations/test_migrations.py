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


def test_status_counts_follow_the_rows(db_url: str) -> None:
    """The triggers keep status_count equal to a real count through inserts, updates and deletes."""

    async def run() -> None:
        engine = create_async_engine(async_url(db_url))
        try:
            async with engine.begin() as conn:
                now = "2026-01-01 00:00:00"
                for i, status in enumerate(["pending", "pending", "queueing", "completed"]):
                    due = "NULL" if status == "completed" else f"'{now}'"
                    await conn.execute(
                        sa.text(
                            "INSERT INTO job (video_model_id, status, callback_url, events, client_metadata, "
                            "created_at, updated_at, expires_at, next_poll_at, poll_count, poll_interval, "
                            f"not_found_count, delivery) VALUES ('j{i}', '{status}', 'http://x', '[]', '{{}}', "
                            f"'{now}', '{now}', '{now}', {due}, 0, 1, 0, 'none')"
                        )
                    )
                await conn.execute(
                    sa.text("UPDATE job SET status = 'processing' WHERE video_model_id = 'j0'")
                )
                await conn.execute(sa.text("UPDATE job SET progress = 5 WHERE video_model_id = 'j1'"))
                await conn.execute(sa.text("DELETE FROM job WHERE video_model_id = 'j2'"))
                real: dict[str, int] = dict(
                    (await conn.execute(sa.text("SELECT status, count(*) FROM job GROUP BY status"))).all()
                )
                kept: dict[str, int] = dict(
                    (
                        await conn.execute(
                            sa.text(
                                "SELECT status, sum(n) FROM status_count WHERE kind = 'job' GROUP BY status"
                            )
                        )
                    ).all()
                )
            assert (
                {k: v for k, v in kept.items() if v}
                == real
                == {"pending": 1, "processing": 1, "completed": 1}
            )
        finally:
            await engine.dispose()

    asyncio.run(run())
