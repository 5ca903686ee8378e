"""What the environment says about tenants, applied at start, and the secrets callbacks are signed with.

The built-in tenant `default` owns RELAY_API_TOKENS and RELAY_WEBHOOK_SECRET (SPEC §8): the tokens
are synced into the database at each start (so they are listed, and removing one revokes it), and the
secret, while set, is the only one `default` signs with (never stored). Without it, `default` signs
with a secret generated at first start and kept in the database.
"""

from __future__ import annotations

from app.config import Settings
from app.db import Database
from app.models import DEFAULT_TENANT_ID, utcnow
from app.store import tenants
from app.webhooks import SecretsOf


async def apply_environment(db: Database, settings: Settings) -> None:
    await tenants.sync_env_tokens(db, settings.api_token_values)
    if settings.webhook_secret is None:
        await tenants.ensure_secret(db, DEFAULT_TENANT_ID)


def env_secret_of(settings: Settings, tenant_id: int) -> str | None:
    """RELAY_WEBHOOK_SECRET, for the tenant it belongs to."""
    if tenant_id == DEFAULT_TENANT_ID and settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    return None


def secrets_of(db: Database, settings: Settings) -> SecretsOf:
    async def lookup(tenant_id: int) -> list[str]:
        if (env := env_secret_of(settings, tenant_id)) is not None:
            return [env]
        return await tenants.signing_secrets(db, tenant_id, utcnow())

    return lookup


async def current_secret(db: Database, settings: Settings, tenant_name: str) -> str:
    """The secret a tenant's callbacks are signed with now (`akool-relay webhook-secret`)."""
    tenant = await tenants.find(db, name=tenant_name)
    assert tenant.id is not None, "loaded"
    if (env := env_secret_of(settings, tenant.id)) is not None:
        return env
    await tenants.ensure_secret(db, tenant.id)
    return (await tenants.signing_secrets(db, tenant.id, utcnow()))[0]
