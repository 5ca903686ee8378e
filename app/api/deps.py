"""Dependencies shared by the routes, defined once as `Annotated` aliases: the runtime, and who calls."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from app.errors import NotFound, TenantNotFound, Unauthorized, field_error
from app.runtime import Runtime
from app.schemas import TENANT_NAME_PATTERN
from app.store import tenants
from app.store.jobs import Scope


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@dataclass(frozen=True)
class Caller:
    """Who sent the request. `tenant_id` None: an operator, who sees every tenant (an admin token, or
    an API open to all because no token exists); `admin`: holds an admin token (operator routes)."""

    tenant_id: int | None
    tenant_name: str | None = None
    admin: bool = False

    @property
    def operator(self) -> bool:
        return self.tenant_id is None

    @property
    def cursor_scope(self) -> str:
        """What the caller's cursors are bound to."""
        return "*" if self.tenant_id is None else str(self.tenant_id)


OPEN = Caller(tenant_id=None)
ADMIN = Caller(tenant_id=None, admin=True)


def _bearer(request: Request) -> str | None:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    token = presented.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(request: Request, runtime: RuntimeDep) -> Caller:
    """An admin token (compared in constant time against each), a tenant's token (looked up by its
    hash, on every request: a revocation holds at once), or no token while none exists (open API)."""
    token = _bearer(request)
    if token is not None:
        given = token.encode()
        matches = [hmac.compare_digest(given, t.encode()) for t in runtime.settings.admin_token_values]
        if any(matches):  # every token compared: no early exit
            return ADMIN
        owner = await tenants.owner_of(runtime.db, token)
        if owner is not None:
            return Caller(owner.tenant_id, owner.tenant_name)
    if not runtime.settings.admin_tokens and not await tenants.any_token(runtime.db):
        return OPEN
    raise Unauthorized()


CallerDep = Annotated[Caller, Depends(authenticate)]
Authorized = Depends(authenticate)


async def require_admin(caller: CallerDep) -> Caller:
    """Operator routes: without an admin token they answer as a route that does not exist."""
    if not caller.admin:
        raise NotFound()
    return caller


AdminDep = Annotated[Caller, Depends(require_admin)]


async def tenant_scope(
    caller: CallerDep,
    runtime: RuntimeDep,
    tenant: Annotated[
        str | None,
        Query(max_length=64, pattern=TENANT_NAME_PATTERN, description="operators only: one tenant's jobs"),
    ] = None,
) -> Scope:
    """Whose jobs a request covers: a tenant's own; an operator's `?tenant=`, else every tenant's.
    A tenant that passes `tenant` gets 422, as does an unknown name."""
    if tenant is None:
        return Scope(caller.tenant_id, operator=caller.operator)
    return Scope(await named_tenant(runtime, caller, tenant, where="query"), operator=True)


async def named_tenant(runtime: Runtime, caller: Caller, name: str, *, where: str) -> int:
    """The id of the tenant an operator names (a query parameter or a body field `tenant`); 422 when
    a tenant names one, or the name is unknown."""
    if not caller.operator:
        raise field_error("tenant", "only operators may name a tenant", name, where=where)
    try:
        found = await tenants.find(runtime.db, name=name)
    except TenantNotFound:
        raise field_error("tenant", "no such tenant", name, where=where) from None
    assert found.id is not None, "loaded"
    return found.id


def opened_cursor(runtime: Runtime, bound: str, cursor: str | None) -> int | None:
    """The row id a list's `cursor` pages on from (None without one); 422 for a cursor that was not
    sealed for `bound` (this list, this caller) or was altered."""
    if cursor is None:
        return None
    try:
        return runtime.cursors.open(bound, cursor)
    except ValueError as exc:
        raise field_error("cursor", str(exc), cursor, where="query") from None


ScopeDep = Annotated[Scope, Depends(tenant_scope)]
