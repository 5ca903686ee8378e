"""Claiming rows by lease: one statement that picks due rows and stamps them with a lease.

On PostgreSQL the inner SELECT uses FOR UPDATE SKIP LOCKED, so replicas claiming at the same moment
take disjoint rows; on SQLite the surrounding BEGIN IMMEDIATE makes the claim the only writer.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Event, Job

Leased = type[Job] | type[Event]


def new_token() -> str:
    return uuid.uuid4().hex


def lease_free(table: Leased, now: datetime) -> sa.ColumnElement[bool]:
    locked_until = sa.inspect(table).columns["locked_until"]
    return sa.or_(locked_until.is_(None), locked_until < now)


async def claim(
    session: AsyncSession,
    table: Leased,
    due: sa.Select[Any],
    *,
    now: datetime,
    lease_seconds: float,
    returning: list[Any],
) -> tuple[str, list[sa.Row[Any]]]:
    """Lease the rows `due` selects (a SELECT of ids with its own ORDER BY / LIMIT); returns the token."""
    token = new_token()
    columns = sa.inspect(table).columns
    picked = due.with_for_update(skip_locked=True).scalar_subquery()
    stmt = (
        sa.update(table)
        .where(columns["id"].in_(picked))
        .values(locked_until=now + timedelta(seconds=lease_seconds), lease_token=token)
        .returning(*returning)
    )
    rows = (await session.execute(stmt, execution_options={"synchronize_session": False})).all()
    return token, list(rows)


async def release(session: AsyncSession, table: Leased, leases: list[tuple[int, str]]) -> None:
    """Give leased rows back (shutdown): only rows we still hold, so a lost lease is left alone."""
    columns = sa.inspect(table).columns
    for row_id, token in leases:
        await session.execute(
            sa.update(table)
            .where(columns["id"] == row_id, columns["lease_token"] == token)
            .values(locked_until=None, lease_token=None),
            execution_options={"synchronize_session": False},
        )
