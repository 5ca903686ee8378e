"""The jobs API (SPEC §3). Thin: validation in schemas, database work in jobstore, scoped to the
caller's tenant (an operator's: every tenant, or `?tenant=`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from app.api.deps import Authorized, Caller, CallerDep, RuntimeDep, ScopeDep, named_tenant, opened_cursor
from app.errors import CallbackConflict, field_error
from app.models import DEFAULT_TENANT_ID, JobStatus
from app.netguard import UnsafeCallbackURL, check_callback_url
from app.schemas import (
    ID_PATTERN,
    BatchItem,
    BatchResult,
    JobBatch,
    JobCreate,
    JobDetail,
    JobPublic,
    JobsPage,
    JobUpdate,
    UTCTime,
)
from app.store import jobs as jobstore
from app.store.jobs import Registered


class ErrorBody(BaseModel):
    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


REGISTERED_STATUS = {
    Registered.NEW: 201,
    Registered.SAME: 200,
    Registered.CONFLICT: CallbackConflict.status_code,
}

router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    dependencies=[Authorized],
    # 400: a body that cannot be read at all (not UTF-8); 413: over the size limit.
    responses=_errors(400, 401, 413),
)


async def _why_refused(runtime: RuntimeDep, url: str) -> str | None:
    """Why a callback URL is refused (SSRF guard: private addresses, no DNS answer), or None."""
    try:
        await check_callback_url(url, allow_private=runtime.settings.allow_private_callbacks)
    except UnsafeCallbackURL as exc:
        return str(exc)
    return None


async def _check_callback(runtime: RuntimeDep, url: str) -> None:
    if (reason := await _why_refused(runtime, url)) is not None:
        raise field_error("callback_url", reason, url)


async def _owner(runtime: RuntimeDep, caller: Caller, spec: JobCreate) -> int:
    """Whose job this is: the tenant's own; an operator's `tenant` (else `default`)."""
    if spec.tenant is None:
        return DEFAULT_TENANT_ID if caller.tenant_id is None else caller.tenant_id
    return await named_tenant(runtime, caller, spec.tenant, where="body")


@router.post(
    "", status_code=201, response_model=JobPublic, responses={200: {"model": JobPublic}, **_errors(409)}
)
async def create_job(
    spec: JobCreate, runtime: RuntimeDep, caller: CallerDep, response: Response
) -> JobPublic:
    await _check_callback(runtime, spec.callback_url)
    owner = await _owner(runtime, caller, spec)
    [(found, job)] = await jobstore.register(runtime.db, runtime.settings, owner, [spec])
    if found is Registered.CONFLICT:
        raise CallbackConflict()
    response.status_code = REGISTERED_STATUS[found]
    if found is Registered.NEW:
        runtime.jobs_registered()
    return job


@router.post("/batch", response_model=BatchResult)
async def create_jobs(batch: JobBatch, runtime: RuntimeDep, caller: CallerDep) -> BatchResult:
    items: list[BatchItem | None] = []
    valid: list[tuple[int, int, JobCreate]] = []  # index, owner, job
    refused: dict[str, str | None] = {}  # callback URL → why it is refused; a batch mostly repeats one
    for index, raw in enumerate(batch.jobs):
        try:
            spec = JobCreate.model_validate(raw)
        except ValidationError as exc:
            items.append(BatchItem(status=422, detail=exc.errors(include_url=False, include_context=False)))
            continue
        if spec.callback_url not in refused:
            refused[spec.callback_url] = await _why_refused(runtime, spec.callback_url)
        if (reason := refused[spec.callback_url]) is not None:
            items.append(BatchItem(status=422, detail=[{"loc": ["callback_url"], "msg": reason}]))
            continue
        try:
            owner = await _owner(runtime, caller, spec)
        except RequestValidationError as exc:
            items.append(BatchItem(status=422, detail=[{"loc": ["tenant"], "msg": exc.errors()[0]["msg"]}]))
            continue
        items.append(None)
        valid.append((index, owner, spec))
    for owner in sorted({owner for _, owner, _ in valid}):  # one transaction per owner (mostly one)
        mine = [(index, spec) for index, o, spec in valid if o == owner]
        registered = await jobstore.register(runtime.db, runtime.settings, owner, [spec for _, spec in mine])
        for (index, _), (found, job) in zip(mine, registered, strict=True):
            detail = CallbackConflict.default_detail if found is Registered.CONFLICT else None
            items[index] = BatchItem(status=REGISTERED_STATUS[found], job=job, detail=detail)
    if valid:
        runtime.jobs_registered()
    return BatchResult(results=[i for i in items if i is not None])


@router.get("", response_model=JobsPage)
async def list_jobs(
    runtime: RuntimeDep,
    caller: CallerDep,
    scope: ScopeDep,
    status: Annotated[list[JobStatus] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    q: Annotated[
        str | None,
        Query(min_length=1, max_length=64, pattern=ID_PATTERN, description="a video_model_id or its prefix"),
    ] = None,
    since: Annotated[UTCTime | None, Query(description="registered at or after")] = None,
    until: Annotated[UTCTime | None, Query(description="registered before")] = None,
) -> JobsPage:
    before = opened_cursor(runtime, caller.cursor_scope, cursor)
    found = jobstore.JobFilter(statuses=status or [], q=q, since=since, until=until)
    page, next_before = await jobstore.page(runtime.db, scope, found, limit, before, rate=runtime.budget.rate)
    if next_before is not None:
        page.next_cursor = runtime.cursors.seal(caller.cursor_scope, next_before)
    return page


@router.get(
    "/{video_model_id}", response_model=JobDetail, response_model_by_alias=True, responses=_errors(404)
)
async def get_job(video_model_id: str, runtime: RuntimeDep, scope: ScopeDep) -> JobDetail:
    return await jobstore.detail(runtime.db, scope, video_model_id)


@router.patch("/{video_model_id}", response_model=JobPublic, responses=_errors(404))
async def update_job(
    video_model_id: str, change: JobUpdate, runtime: RuntimeDep, scope: ScopeDep
) -> JobPublic:
    if change.callback_url is not None:
        await _check_callback(runtime, change.callback_url)
    return await jobstore.update(runtime.db, scope, video_model_id, change)


@router.delete("/{video_model_id}", status_code=204, response_class=Response, responses=_errors(404))
async def cancel_job(video_model_id: str, runtime: RuntimeDep, scope: ScopeDep) -> Response:
    await jobstore.cancel(runtime.db, runtime.settings, scope, video_model_id)
    return Response(status_code=204)


@router.post("/{video_model_id}/redeliver", status_code=202, responses=_errors(404, 409))
async def redeliver(video_model_id: str, runtime: RuntimeDep, scope: ScopeDep) -> JSONResponse:
    event = await jobstore.redeliver(runtime.db, scope, video_model_id)
    runtime.events_waiting()
    body: dict[str, Any] = {"webhook_id": event.webhook_id, "type": event.type, "state": event.state}
    return JSONResponse(body, status_code=202)
