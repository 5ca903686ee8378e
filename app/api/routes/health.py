"""Liveness, readiness and metrics: open even when API tokens are set."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.store import jobs as jobstore
from app.api.deps import RelayDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready, with the reason"}})
async def readyz(relay: RelayDep) -> JSONResponse:
    reasons = []
    try:
        await relay.db.ping()
    except Exception as exc:
        reasons.append(f"database unavailable ({type(exc).__name__})")
    if not relay.running:
        reasons.append("pollers are not running")
    health = relay.poller.health
    if health.paused:
        reasons.append(f"Akool refuses our credentials: {health.reason or 'auth failed'}")
    if reasons:
        return JSONResponse({"status": "unavailable", "reasons": reasons}, status_code=503)
    return JSONResponse({"status": "ok", "upstream": health.state})


@router.get("/metrics", response_class=Response)
async def metrics(relay: RelayDep) -> Response:
    m = relay.metrics
    async with relay.db.read() as session:
        summary = await jobstore.summarize(session)
    for status, count in summary.jobs.items():
        m.jobs.labels(status).set(count)
    for state, count in summary.deliveries.items():
        m.deliveries_by_state.labels(state).set(count)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
