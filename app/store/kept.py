"""Values the service generates once and keeps (`models.KeptValue`): the key cursors are sealed with."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlmodel import col

from app.db import Database
from app.models import KeptValue
from app.store.dialect import upsert

CURSOR_KEY = "cursor_key"


async def kept_value(db: Database, key: str, make: Callable[[], str]) -> str:
    """The value kept under `key`, made by `make()` the first time."""
    async with db.write() as session:
        # Several replicas may start at once: the first insert wins and everyone reads it back.
        await session.execute(
            upsert(session, KeptValue).values(key=key, value=make()).on_conflict_do_nothing()
        )
        value = await session.scalar(sa.select(col(KeptValue.value)).where(col(KeptValue.key) == key))
    return str(value)
