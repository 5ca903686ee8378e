"""Dependencies shared by the routes, defined once as `Annotated` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.errors import Unauthorized
from app.runtime import Relay


def get_relay(request: Request) -> Relay:
    relay: Relay = request.app.state.relay
    return relay


RelayDep = Annotated[Relay, Depends(get_relay)]


def require_token(request: Request, relay: RelayDep) -> None:
    """Bearer auth when RELAY_API_TOKENS is set; compared in constant time against every token."""
    tokens = relay.settings.api_token_values
    if not tokens:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    given = presented.strip().encode()
    matches = [hmac.compare_digest(given, t.encode()) for t in tokens]  # no early exit
    if scheme.lower() != "bearer" or not any(matches):
        raise Unauthorized()


Authorized = Depends(require_token)
