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


def new_token() -> str:
    return uuid.uuid4().hex


def lease_free(table: Any, now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(table.locked_until.is_(None), table.locked_until < now)


async def claim(
    session: AsyncSession,
    table: Any,
    due: sa.Select[Any],
    *,
    now: datetime,
    lease_seconds: float,
    returning: list[Any],
) -> tuple[str, list[sa.Row[Any]]]:
    """Lease the rows `due` selects (a SELECT of ids with its own ORDER BY / LIMIT); returns the token."""
    token = new_token()
    picked = due.with_for_update(skip_locked=True).scalar_subquery()
    stmt = (
        sa.update(table)
        .where(table.id.in_(picked))
        .values(locked_until=now + timedelta(seconds=lease_seconds), lease_token=token)
        .returning(*returning)
    )
    rows = (await session.execute(stmt, execution_options={"synchronize_session": False})).all()
    return token, list(rows)


async def release(session: AsyncSession, table: Any, leases: list[tuple[int, str]]) -> None:
    """Give leased rows back (shutdown): only rows we still hold, so a lost lease is left alone."""
    for row_id, token in leases:
        await session.execute(
            sa.update(table)
            .where(table.id == row_id, table.lease_token == token)
            .values(locked_until=None, lease_token=None),
            execution_options={"synchronize_session": False},
        )
