"""The `upstream_health` row (id 1) every replica shares: whether Akool is accepting our requests."""

from __future__ import annotations

from typing import Any

from app.db import Database
from app.models import UpstreamHealth
from app.store.dialect import upsert


async def read_health(db: Database) -> UpstreamHealth:
    async with db.read() as session:
        row = await session.get(UpstreamHealth, 1)
    return row or UpstreamHealth()


async def write_health(
    db: Database, values: dict[str, Any], *, errors_seen: int, last_errors: int | None
) -> None:
    """Upsert the row with `values`. `last_errors`: the errors after the last good answer, when the
    batch had one; None adds `errors_seen` to the consecutive errors already counted."""
    consecutive: Any = UpstreamHealth.consecutive_errors + errors_seen if last_errors is None else last_errors
    async with db.write() as session:
        await session.execute(
            upsert(session, UpstreamHealth)
            .values(id=1, **values, consecutive_errors=errors_seen if last_errors is None else last_errors)
            .on_conflict_do_update(index_elements=["id"], set_={**values, "consecutive_errors": consecutive})
        )
