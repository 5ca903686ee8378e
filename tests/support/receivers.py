"""Receivers for delivery tests beyond app.sandbox.receiver: one whose answers a test scripts."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.sandbox.serving import serve_in_background


def attempt_codes(job: dict[str, Any], index: int = 0) -> list[int | None]:
    return [a["status_code"] for a in job["deliveries"][index]["attempts"]]


@dataclass
class Hit:
    path: str
    type: str
    webhook_id: str
    at: float
    status: int


@dataclass
class ScriptedReceiver:
    """A bare receiver whose answer is a function of (path, event type); records every request."""

    answer: Callable[[str, str], tuple[int, dict[str, str]]]
    hits: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        body = await request.json()
        path = request.path_params["path"]
        status, headers = self.answer(path, body.get("type", ""))
        self.hits.append(Hit(path, body.get("type", ""), request.headers["webhook-id"], time.time(), status))
        return Response(b"scripted", status_code=status, headers=headers)


@contextlib.asynccontextmanager
async def scripted(
    answer: Callable[[str, str], tuple[int, dict[str, str]]],
) -> AsyncIterator[tuple[ScriptedReceiver, str]]:
    rec = ScriptedReceiver(answer)
    async with serve_in_background(rec.app) as base_url:
        yield rec, base_url
