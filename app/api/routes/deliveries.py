"""Deliveries across jobs (SPEC §3): GET /deliveries, and POST /deliveries/redeliver for every event the
same filter matches. Thin: the SQL is in store/deliveries.py, scoped to the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from app.api.deps import Authorized, CallerDep, RuntimeDep, ScopeDep, named_tenant, opened_cursor
from app.api.routes.jobs import _errors
from app.models import EventState
from app.schemas import BulkRedelivery, DeliveriesPage, RedeliveryCount, UTCTime
from app.store import deliveries
from app.store.deliveries import DeliveryFilter
from app.store.jobs import Scope

router = APIRouter(
    prefix="/deliveries", tags=["deliveries"], dependencies=[Authorized], responses=_errors(401)
)


@router.get("", response_model=DeliveriesPage)
async def list_deliveries(
    runtime: RuntimeDep,
    caller: CallerDep,
    scope: ScopeDep,
    state: Annotated[list[EventState] | None, Query()] = None,
    since: Annotated[UTCTime | None, Query(description="events made at or after")] = None,
    until: Annotated[UTCTime | None, Query(description="events made before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> DeliveriesPage:
    # Bound to the caller and to this list: a cursor of GET /jobs (a job's row id) is refused here.
    bound = f"deliveries/{caller.cursor_scope}"
    before = opened_cursor(runtime, bound, cursor)
    found = DeliveryFilter(states=state or [], since=since, until=until)
    page, next_before = await deliveries.page(runtime.db, scope, found, limit, before)
    if next_before is not None:
        page.next_cursor = runtime.cursors.seal(bound, next_before)
    return page


@router.post(
    "/redeliver",
    status_code=202,
    response_model=RedeliveryCount,
    # 400: a body that cannot be read at all (not UTF-8); 413: over the size limit. (422 is FastAPI's.)
    responses={
        200: {"model": RedeliveryCount, "description": "dry run: nothing was sent"},
        **_errors(400, 413),
    },
)
async def redeliver_matching(body: BulkRedelivery, runtime: RuntimeDep, caller: CallerDep) -> JSONResponse:
    """Send every matching event again with its own webhook-id, in order per job, after live callbacks."""
    scope = Scope(caller.tenant_id, operator=caller.operator)
    if body.tenant is not None:  # 422 for a tenant, as ?tenant= on the other routes
        scope = Scope(await named_tenant(runtime, caller, body.tenant, where="body"), operator=True)
    found = DeliveryFilter(states=body.state, since=body.since, until=body.until)
    if body.dry_run:
        return JSONResponse({"count": await deliveries.count(runtime.db, scope, found)}, status_code=200)
    count = await deliveries.redeliver(runtime.db, scope, found, after_batch=runtime.events_waiting)
    return JSONResponse({"count": count}, status_code=202)
