"""Tenant management (SPEC §8): operators (an admin token) make tenants, tokens and secrets; a tenant
reads itself and rotates its own secret. Without an admin token the operator routes answer 404."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from app import tenancy
from app.api.deps import AdminDep, CallerDep, RuntimeDep
from app.errors import EnvManaged, NotFound
from app.schemas import TenantName
from app.store import tenants

TenantId = Annotated[int, Path(ge=1, le=2**31 - 1)]
MAX_GRACE = 30 * 86400  # seconds an old secret may keep signing after a rotation


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TenantName


class TenantUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    disabled: bool


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: float = Field(default=86400, ge=0, le=MAX_GRACE, allow_inf_nan=False)


class TenantPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    disabled: bool
    created_at: datetime


class TenantCreated(BaseModel):
    id: int
    name: str
    token: str = Field(description="shown only now")
    token_id: str
    webhook_secret: str
    created_at: datetime


class TokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    prefix: str = Field(description="the token's first characters")
    source: str = Field(description="`env` (RELAY_API_TOKENS, managed there) or `api`")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(BaseModel):
    id: str
    token: str = Field(description="shown only now")


class SecretRotated(BaseModel):
    webhook_secret: str
    previous_valid_until: datetime


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"description": "see `detail`"} for code in codes}


# 400: a body that cannot be read at all (not UTF-8 / JSON); 413: over the size limit.
router = APIRouter(tags=["tenants"], responses=_errors(400, 401, 404, 413))


@router.post("/tenants", status_code=201, response_model=TenantCreated, responses=_errors(409))
async def create_tenant(body: TenantCreate, runtime: RuntimeDep, _: AdminDep) -> TenantCreated:
    return TenantCreated(**asdict(await tenants.create(runtime.db, body.name)))


@router.get("/tenants", response_model=list[TenantPublic])
async def list_tenants(runtime: RuntimeDep, _: AdminDep) -> list[TenantPublic]:
    return [TenantPublic.model_validate(t) for t in await tenants.all_tenants(runtime.db)]


@router.patch("/tenants/{tenant_id}", response_model=TenantPublic)
async def update_tenant(
    tenant_id: TenantId, change: TenantUpdate, runtime: RuntimeDep, _: AdminDep
) -> TenantPublic:
    return TenantPublic.model_validate(await tenants.set_disabled(runtime.db, tenant_id, change.disabled))


@router.get("/tenants/{tenant_id}/tokens", response_model=list[TokenPublic])
async def list_tokens(tenant_id: TenantId, runtime: RuntimeDep, _: AdminDep) -> list[TokenPublic]:
    return [TokenPublic.model_validate(t) for t in await tenants.tokens(runtime.db, tenant_id)]


@router.post("/tenants/{tenant_id}/tokens", status_code=201, response_model=TokenCreated)
async def add_token(tenant_id: TenantId, runtime: RuntimeDep, _: AdminDep) -> TokenCreated:
    token_id, token = await tenants.add_token(runtime.db, tenant_id)
    return TokenCreated(id=token_id, token=token)


@router.delete(
    "/tenants/{tenant_id}/tokens/{token_id}",
    status_code=204,
    response_class=Response,
    responses=_errors(409),
)
async def revoke_token(
    tenant_id: TenantId,
    token_id: Annotated[str, Path(max_length=32, pattern=r"^[A-Za-z0-9_]+$")],
    runtime: RuntimeDep,
    _: AdminDep,
) -> Response:
    await tenants.revoke_token(runtime.db, tenant_id, token_id)
    return Response(status_code=204)


@router.post(
    "/tenants/{tenant_id}/webhook-secret/rotate", response_model=SecretRotated, responses=_errors(409)
)
async def rotate_secret(
    tenant_id: TenantId, body: SecretRotation, runtime: RuntimeDep, caller: CallerDep
) -> SecretRotated:
    """An admin, or the tenant itself: any other caller finds no such route."""
    if not (caller.admin or caller.tenant_id == tenant_id):
        raise NotFound()
    if tenancy.env_secret_of(runtime.settings, tenant_id) is not None:
        raise EnvManaged("this secret is set by RELAY_WEBHOOK_SECRET: change it there")
    secret, until = await tenants.rotate_secret(runtime.db, tenant_id, body.grace_seconds)
    return SecretRotated(webhook_secret=secret, previous_valid_until=until)


@router.get("/tenant", response_model=TenantPublic)
async def own_tenant(runtime: RuntimeDep, caller: CallerDep) -> TenantPublic:
    """The caller's own tenant (operators have none: 404)."""
    if caller.tenant_id is None:
        raise NotFound()
    return TenantPublic.model_validate(await tenants.find(runtime.db, tenant_id=caller.tenant_id))
