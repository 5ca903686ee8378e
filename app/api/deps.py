"""Dependencies shared by the routes, defined once as `Annotated` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.errors import Unauthorized
from app.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_token(request: Request, runtime: RuntimeDep) -> None:
    """Bearer auth when RELAY_API_TOKENS is set; compared in constant time against every token."""
    tokens = runtime.settings.api_token_values
    if not tokens:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    given = presented.strip().encode()
    matches = [hmac.compare_digest(given, t.encode()) for t in tokens]  # no early exit
    if scheme.lower() != "bearer" or not any(matches):
        raise Unauthorized()


Authorized = Depends(require_token)
