"""GET /stats (SPEC §3): per-minute series for the console's charts, scoped to the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import Authorized, RuntimeDep, ScopeDep
from app.api.routes.jobs import _errors
from app.schemas import Stats
from app.store import stats

router = APIRouter(tags=["stats"], dependencies=[Authorized], responses=_errors(401))


@router.get("/stats", response_model=Stats)
async def get_stats(
    runtime: RuntimeDep,
    scope: ScopeDep,
    minutes: Annotated[int, Query(ge=1, le=1440, description="the window: this many minutes to now")] = 60,
) -> Stats:
    """One bucket per minute, oldest first (the current minute last), zero-filled; `akool_requests`
    in operators' views only."""
    return await stats.series(runtime.db, scope, minutes)
