"""Values the service generates once and keeps (`models.KeptValue`): the webhook secret."""

from __future__ import annotations

import base64
import secrets

import sqlalchemy as sa
from pydantic import SecretStr
from sqlmodel import col

from app.db import Database
from app.models import KeptValue
from app.store.dialect import upsert

WEBHOOK_SECRET_KEY = "webhook_secret"


async def webhook_secret(db: Database, configured: SecretStr | None) -> str:
    """RELAY_WEBHOOK_SECRET (`configured`), or the one generated at first start and kept here."""
    if configured is not None:
        return configured.get_secret_value()
    generated = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    async with db.write() as session:
        # Several replicas may start at once: the first insert wins and everyone reads it back.
        await session.execute(
            upsert(session, KeptValue)
            .values(key=WEBHOOK_SECRET_KEY, value=generated)
            .on_conflict_do_nothing()
        )
        value = await session.scalar(
            sa.select(col(KeptValue.value)).where(col(KeptValue.key) == WEBHOOK_SECRET_KEY)
        )
    return str(value)
