"""Database.run: a transaction PostgreSQL aborts to break a deadlock runs again; other errors do not."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db import Database
from app.models import KeptValue


async def test_a_transaction_aborted_as_a_deadlock_runs_again(pg_db_url: str) -> None:
    db = Database(pg_db_url)
    try:
        async with db.write() as session:
            session.add_all([KeptValue(key="a", value="0"), KeptValue(key="b", value="0")])
        tries: Counter[str] = Counter()
        both_hold_one = asyncio.Barrier(2)

        async def bump(session: AsyncSession, key: str) -> None:
            await session.execute(
                sa.update(KeptValue).where(col(KeptValue.key) == key).values(value=col(KeptValue.value) + "1")
            )

        def crossing(name: str, first: str, second: str) -> Callable[[AsyncSession], Awaitable[None]]:
            async def work(session: AsyncSession) -> None:
                tries[name] += 1
                await bump(session, first)
                if tries[name] == 1:
                    await both_hold_one.wait()  # each holds one row and asks for the other's: deadlock
                await bump(session, second)

            return work

        await asyncio.wait_for(
            asyncio.gather(db.run(crossing("x", "a", "b")), db.run(crossing("y", "b", "a"))), 30
        )
        async with db.read() as session:
            values = {
                k: v
                for k, v in (await session.execute(sa.select(col(KeptValue.key), col(KeptValue.value)))).all()
            }
        assert sorted(tries.values()) == [1, 2]  # PostgreSQL aborted one; it ran again
        assert values == {"a": "011", "b": "011"}  # both transactions' changes, each exactly once
    finally:
        await db.dispose()


async def test_other_errors_are_not_retried(pg_db_url: str) -> None:
    db = Database(pg_db_url)
    tries = 0

    async def duplicate(session: AsyncSession) -> None:
        nonlocal tries
        tries += 1
        session.add_all([KeptValue(key="same", value="1")])
        await session.flush()
        session.add_all([KeptValue(key="same", value="2")])
        await session.flush()

    try:
        with pytest.raises(IntegrityError):
            await db.run(duplicate)
        assert tries == 1
    finally:
        await db.dispose()
