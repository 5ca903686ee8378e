"""Tenants in tests (SPEC §8): the operator's token, bearer headers, and making a tenant over HTTP."""

from __future__ import annotations

from typing import Any

from tests.support.relay import RunningRelay

ADMIN = "admin-token-for-tests-0123456789"  # RELAY_ADMIN_TOKENS of the relays that make tenants
AS_ADMIN = {"authorization": f"Bearer {ADMIN}"}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def make_tenant(r: RunningRelay, name: str) -> dict[str, Any]:
    """POST /tenants as the operator; it must answer 201. Returns the tenant as made (its one
    showing of the token and the webhook secret)."""
    response = await r.client.post("/tenants", json={"name": name}, headers=AS_ADMIN)
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    assert set(made) == {"id", "name", "token", "token_id", "webhook_secret", "created_at"}
    return made
