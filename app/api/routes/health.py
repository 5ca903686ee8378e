"""Liveness, readiness and metrics: open even when API tokens are set."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import RelayDep
from app.models import Event, Job, JobStatus

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
        by_status = dict(
            (await session.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status))).all()
        )
        by_state = dict(
            (await session.execute(sa.select(Event.state, sa.func.count()).group_by(Event.state))).all()
        )
    for status in JobStatus:
        m.jobs.labels(status.value).set(by_status.get(status.value, 0))
    for state in ("pending", "retrying", "delivered", "dead"):
        m.deliveries_by_state.labels(state).set(by_state.get(state, 0))
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
