"""Idempotency keys of POST /translations (SPEC §7): one `akool_create` row per key.

The row is written (`in_progress`) and committed before Akool is asked, so Akool is asked at most once
per key, even across a crash: a row left `in_progress` by a process that died is answered as `unknown`
once the call it recorded cannot be running any more, and is never sent again.

- `begin`: record the attempt, or hand back what the key already has.
- `record_created`: register every job Akool made and keep the answer, in one transaction.
- `keep`: keep an answer without jobs (a business error, `done`) or mark the outcome `unknown`.
- `forget`: drop the row when nothing reached Akool, so the key may be tried again.
- `delete_expired_creates`: housekeeping, keys past their 24 h.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel, col

from app.config import Settings
from app.db import Database
from app.models import AkoolCreate, utcnow
from app.schemas import JobCreate, JobPublic
from app.store import jobs as jobstore
from app.store.dialect import upsert
from app.store.jobs import Registered

CREATE_TABLE = SQLModel.metadata.tables[AkoolCreate.__tablename__]
BEGIN_TRIES = 3  # a row can vanish between our INSERT and our read (a 503 frees its key)


class CreateState(StrEnum):
    IN_PROGRESS = "in_progress"  # recorded; Akool is being asked, or we died asking
    DONE = "done"  # the answer is kept: status_code and response
    UNKNOWN = "unknown"  # sent, no answer we could trust: never sent again


@dataclass(frozen=True)
class KeptCreate:
    """What a key already has."""

    request_hash: str
    state: CreateState
    status_code: int | None
    response: dict[str, Any] | None
    created_at: datetime


Respond = Callable[[list[tuple[Registered, JobPublic]]], tuple[int, dict[str, Any]]]


def tenant_key(tenant_id: int, idempotency_key: str) -> str:
    """The row's key: the tenant's own (another tenant's equal key is another key, and never sees
    this one's answer), hashed so that it fits the column whatever the client sent (migration 0007)."""
    return f"{tenant_id}/{hashlib.sha256(idempotency_key.encode()).hexdigest()}"


async def begin(db: Database, key: str, request_hash: str) -> tuple[KeptCreate | None, datetime]:
    """Record the attempt as `in_progress`, committed before Akool is asked. Returns (None, when it
    was recorded) for a new key, else (the row the key has, now)."""

    async def insert_or_read(session: AsyncSession) -> tuple[KeptCreate | None, datetime]:
        now = utcnow()
        stmt = (
            upsert(session, CREATE_TABLE)
            .values(
                key=key,
                request_hash=request_hash,
                state=CreateState.IN_PROGRESS.value,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(CREATE_TABLE.c.key)
        )
        if (await session.execute(stmt)).first() is not None:
            return None, now
        row = await session.get(AkoolCreate, key)
        if row is None:
            raise _Vanished()
        kept = KeptCreate(
            row.request_hash, CreateState(row.state), row.status_code, row.response, row.created_at
        )
        return kept, now

    for attempt in range(1, BEGIN_TRIES + 1):
        try:
            return await db.run(insert_or_read, urgent=True)  # urgent: a client waits
        except _Vanished:
            if attempt == BEGIN_TRIES:
                raise
    raise AssertionError("unreachable")


class _Vanished(Exception):
    """The key's row was deleted between our INSERT (which it blocked) and our read."""


async def record_created(
    db: Database,
    settings: Settings,
    key: str,
    tenant_id: int,
    specs: Sequence[JobCreate],
    respond: Respond,
) -> tuple[int, dict[str, Any]]:
    """In one transaction: register the tenant's jobs exactly as POST /jobs does, and keep the answer
    `respond(registered)` makes of them (the key becomes `done`). Returns that answer."""

    async def work(session: AsyncSession) -> tuple[int, dict[str, Any]]:
        registered = await jobstore.insert_new_jobs(session, settings, tenant_id, specs) if specs else []
        status_code, body = respond(registered)
        await _set(session, key, CreateState.DONE, status_code, body)
        return status_code, body

    try:
        return await db.run(work, urgent=True)
    except IntegrityError:
        # Another replica registered one of these ids at the same moment; now we will see it.
        return await db.run(work, urgent=True)


async def keep(
    db: Database,
    key: str,
    state: CreateState,
    status_code: int | None = None,
    response: dict[str, Any] | None = None,
) -> None:
    """Keep an answer that made no job (`done`), or say the outcome is `unknown`."""

    async def work(session: AsyncSession) -> None:
        await _set(session, key, state, status_code, response)

    await db.run(work, urgent=True)


async def forget(db: Database, key: str) -> None:
    """Nothing reached Akool: drop the key's row so the same key may be tried again."""

    async def work(session: AsyncSession) -> None:
        await session.execute(sa.delete(AkoolCreate).where(col(AkoolCreate.key) == key))

    await db.run(work, urgent=True)


async def _set(
    session: AsyncSession,
    key: str,
    state: CreateState,
    status_code: int | None,
    response: dict[str, Any] | None,
) -> None:
    await session.execute(
        sa.update(AkoolCreate)
        .where(col(AkoolCreate.key) == key)
        .values(state=state.value, status_code=status_code, response=response, updated_at=utcnow())
    )


async def delete_expired_creates(session: AsyncSession, older_than: datetime, limit: int = 1000) -> int:
    """Delete up to `limit` keys made before `older_than` (SPEC §6: kept 24 h); how many went.
    One short batch: call it again while it returns `limit`."""
    expired = (
        sa.select(col(AkoolCreate.key))
        .where(col(AkoolCreate.created_at) < older_than)
        .order_by(col(AkoolCreate.created_at))
        .limit(limit)
    )
    keys = list(await session.scalars(expired))
    if not keys:
        return 0
    result: Any = await session.execute(
        sa.delete(AkoolCreate).where(col(AkoolCreate.key).in_(keys)),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount)
