"""Tenants, their tokens and their webhook secrets (SPEC §8): every statement about them is here.

Tokens are kept as SHA-256 (a 256-bit random token needs no slow hash; a lookup by hash is one
index probe and reveals nothing by its timing). A token is shown once, when it is made. The
environment's RELAY_API_TOKENS are the `default` tenant's, synced in at start (`sync_env_tokens`);
RELAY_WEBHOOK_SECRET is never stored: while set it is `default`'s only secret.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db import Database
from app.errors import EnvManaged, TenantExists, TenantNotFound, TokenNotFound
from app.models import (
    DEFAULT_TENANT_ID,
    EventState,
    JobStatus,
    StatusCount,
    Tenant,
    TenantSecret,
    TenantToken,
    utcnow,
)
from app.store import subscriptions
from app.store.dialect import upsert

MAX_SIGNING_SECRETS = 10  # SPEC §8: at most this many signatures per callback
LAST_USED_EVERY = timedelta(seconds=60)  # last_used_at is written at most this often per token
ENV = "env"  # TenantToken.source of RELAY_API_TOKENS
COUNTER_SHARDS = 16  # status_count shards per tenant on PostgreSQL (migration 0002); SQLite uses 0 only


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "art_" + secrets.token_urlsafe(32)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _token_id(token_hash: str) -> str:
    return "tok_" + token_hash[:16]  # derived, so an env token keeps its id across restarts


def _token_row(tenant_id: int, token: str, now: datetime, source: str = "api") -> dict[str, Any]:
    """A tenant_token row for `token`: its hash, the id derived from it, its first characters."""
    token_hash = hash_token(token)
    return {
        "id": _token_id(token_hash),
        "tenant_id": tenant_id,
        "token_hash": token_hash,
        "prefix": token[:8],
        "source": source,
        "created_at": now,
    }


@dataclass(frozen=True)
class TokenOwner:
    """Who a valid tenant token belongs to."""

    tenant_id: int
    tenant_name: str
    token_id: str


@dataclass(frozen=True)
class CreatedTenant:
    id: int
    name: str
    token: str
    token_id: str
    webhook_secret: str
    created_at: datetime


async def owner_of(db: Database, token: str) -> TokenOwner | None:
    """The tenant a token acts for; None for an unknown or revoked token or a disabled tenant.

    Read on every request (no cache), so a revocation holds at once on every replica."""
    now = utcnow()
    async with db.read() as session:
        row = (
            await session.execute(
                sa.select(
                    col(TenantToken.id), col(TenantToken.last_used_at), col(Tenant.id), col(Tenant.name)
                )
                .join(Tenant, col(Tenant.id) == col(TenantToken.tenant_id))
                .where(
                    col(TenantToken.token_hash) == hash_token(token),
                    col(TenantToken.revoked_at).is_(None),
                    ~col(Tenant.disabled),
                )
            )
        ).first()
    if row is None:
        return None
    token_id, last_used, tenant_id, name = row
    if last_used is None or now - last_used >= LAST_USED_EVERY:
        async with db.write() as session:
            await session.execute(
                sa.update(TenantToken).where(col(TenantToken.id) == token_id).values(last_used_at=now)
            )
    assert tenant_id is not None, "a primary key"
    return TokenOwner(tenant_id, name, token_id)


async def any_token(db: Database) -> bool:
    """Whether any tenant token is valid: an API with none (and no admin token) is open."""
    async with db.read() as session:
        found = await session.scalar(
            sa.select(col(TenantToken.id)).where(col(TenantToken.revoked_at).is_(None)).limit(1)
        )
    return found is not None


async def sync_env_tokens(db: Database, tokens: Sequence[str]) -> None:
    """RELAY_API_TOKENS become `default`'s env tokens; env tokens no longer set are revoked."""
    now = utcnow()
    hashes = {hash_token(t): t for t in tokens}
    async with db.write() as session:
        for token in hashes.values():
            # Replicas starting together insert the same rows: the first wins, the others skip.
            row = _token_row(DEFAULT_TENANT_ID, token, now, source=ENV)
            await session.execute(upsert(session, TenantToken).values(**row).on_conflict_do_nothing())
        await session.execute(
            sa.update(TenantToken)
            .where(
                col(TenantToken.source) == ENV,
                col(TenantToken.token_hash).not_in(list(hashes)),
                col(TenantToken.revoked_at).is_(None),
            )
            .values(revoked_at=now)
        )
        # Revoked env tokens set again are valid again.
        await session.execute(
            sa.update(TenantToken)
            .where(col(TenantToken.source) == ENV, col(TenantToken.token_hash).in_(list(hashes)))
            .values(revoked_at=None)
        )


async def create(db: Database, name: str) -> CreatedTenant:
    now = utcnow()
    token, secret = new_token(), new_secret()
    try:
        async with db.write(urgent=True) as session:
            tenant = Tenant(name=name, created_at=now)
            session.add(tenant)
            await session.flush()
            assert tenant.id is not None, "flushed"
            row = _token_row(tenant.id, token, now)
            session.add(TenantToken(**row))
            session.add(TenantSecret(tenant_id=tenant.id, secret=secret, created_at=now))
            # The count triggers only update: the tenant's counter rows exist from the start.
            counted = [("job", s.value) for s in JobStatus] + [("event", s.value) for s in EventState]
            session.add_all(
                StatusCount(tenant_id=tenant.id, kind=kind, status=status, shard=shard, n=0)
                for kind, status in counted
                for shard in range(1 if db.is_sqlite else COUNTER_SHARDS)
            )
    except IntegrityError:
        raise TenantExists() from None
    return CreatedTenant(tenant.id, name, token, row["id"], secret, now)


async def all_tenants(db: Database) -> list[Tenant]:
    async with db.read() as session:
        return list(await session.scalars(sa.select(Tenant).order_by(col(Tenant.id))))


async def find(db: Database, *, tenant_id: int | None = None, name: str | None = None) -> Tenant:
    async with db.read() as session:
        stmt = sa.select(Tenant)
        stmt = stmt.where(col(Tenant.id) == tenant_id) if tenant_id is not None else stmt
        stmt = stmt.where(col(Tenant.name) == name) if name is not None else stmt
        tenant = await session.scalar(stmt)
    if tenant is None:
        raise TenantNotFound()
    return tenant


async def set_disabled(db: Database, tenant_id: int, disabled: bool) -> Tenant:
    async with db.write(urgent=True) as session:
        tenant = await session.get(Tenant, tenant_id, with_for_update=True)
        if tenant is None:
            raise TenantNotFound()
        if tenant.disabled != disabled:
            tenant.disabled = disabled
            await session.flush()  # the lead moves by the tenant's new state
            # Its jobs stop being polled: what it leads passes to other tenants' subscriptions; and
            # back (store/subscriptions.py).
            move = subscriptions.step_aside if disabled else subscriptions.relead
            await move(session, tenant_id, utcnow())
    return tenant


async def tokens(db: Database, tenant_id: int) -> list[TenantToken]:
    await find(db, tenant_id=tenant_id)
    async with db.read() as session:
        return list(
            await session.scalars(
                sa.select(TenantToken)
                .where(col(TenantToken.tenant_id) == tenant_id)
                .order_by(col(TenantToken.created_at), col(TenantToken.id))
            )
        )


async def add_token(db: Database, tenant_id: int) -> tuple[str, str]:
    """A new token for the tenant: (token id, token). The token is shown only now."""
    await find(db, tenant_id=tenant_id)
    token = new_token()
    row = _token_row(tenant_id, token, utcnow())
    async with db.write(urgent=True) as session:
        session.add(TenantToken(**row))
    return row["id"], token


async def revoke_token(db: Database, tenant_id: int, token_id: str) -> None:
    async with db.write(urgent=True) as session:
        token = await session.scalar(
            sa.select(TenantToken)
            .where(col(TenantToken.id) == token_id, col(TenantToken.tenant_id) == tenant_id)
            .with_for_update()
        )
        if token is None:
            raise TokenNotFound()
        if token.source == ENV:
            raise EnvManaged("this token is set by RELAY_API_TOKENS: remove it there")
        if token.revoked_at is None:
            token.revoked_at = utcnow()


async def ensure_secret(db: Database, tenant_id: int) -> None:
    """Give the tenant a secret when it has none (the default tenant's first start)."""
    async with db.write() as session:
        # Several replicas may start at once: the tenant row's lock makes one of them make it.
        await session.execute(sa.select(col(Tenant.id)).where(col(Tenant.id) == tenant_id).with_for_update())
        found = await session.scalar(
            sa.select(col(TenantSecret.id)).where(col(TenantSecret.tenant_id) == tenant_id).limit(1)
        )
        if found is None:
            session.add(TenantSecret(tenant_id=tenant_id, secret=new_secret(), created_at=utcnow()))


async def signing_secrets(db: Database, tenant_id: int, now: datetime) -> list[str]:
    """The secrets a callback of this tenant is signed with: the current one and those still in
    their grace, newest first (at most MAX_SIGNING_SECRETS)."""
    async with db.read() as session:
        return list(
            await session.scalars(
                sa.select(col(TenantSecret.secret))
                .where(
                    col(TenantSecret.tenant_id) == tenant_id,
                    sa.or_(col(TenantSecret.valid_until).is_(None), col(TenantSecret.valid_until) > now),
                )
                .order_by(col(TenantSecret.id).desc())
                .limit(MAX_SIGNING_SECRETS)
            )
        )


async def rotate_secret(db: Database, tenant_id: int, grace_seconds: float) -> tuple[str, datetime]:
    """A new current secret; the old ones stay valid until now + grace. Returns (secret, until)."""
    now = utcnow()
    until = now + timedelta(seconds=grace_seconds)
    secret = new_secret()
    async with db.write(urgent=True) as session:
        tenant = await session.get(Tenant, tenant_id, with_for_update=True)
        if tenant is None:
            raise TenantNotFound()
        await session.execute(
            sa.update(TenantSecret)
            .where(
                col(TenantSecret.tenant_id) == tenant_id,
                sa.or_(col(TenantSecret.valid_until).is_(None), col(TenantSecret.valid_until) > until),
            )
            .values(valid_until=until)
        )
        session.add(TenantSecret(tenant_id=tenant_id, secret=secret, created_at=now))
    return secret, until


async def delete_expired_credentials(session: AsyncSession, older_than: datetime) -> int:
    """Housekeeping: tokens revoked and secrets expired before `older_than` (a few rows at most)."""
    tokens = await session.execute(
        sa.delete(TenantToken).where(col(TenantToken.revoked_at) < older_than),
        execution_options={"synchronize_session": False},
    )
    secrets_gone = await session.execute(
        sa.delete(TenantSecret).where(col(TenantSecret.valid_until) < older_than),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(tokens, "rowcount", 0) or 0) + int(getattr(secrets_gone, "rowcount", 0) or 0)
