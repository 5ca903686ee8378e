"""Liveness, readiness and metrics: open even when API tokens are set."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready, with the reason"}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    reasons, upstream = await runtime.readiness()
    if reasons:
        return JSONResponse({"status": "unavailable", "reasons": reasons}, status_code=503)
    return JSONResponse({"status": "ok", "upstream": upstream})


@router.get("/metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(await runtime.metrics_text(), media_type=CONTENT_TYPE_LATEST)
