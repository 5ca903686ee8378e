"""A callback receiver that verifies Standard Webhooks signatures and records what arrives.

Used by the demo, the tests and the benchmarks. Its answers can be scripted: fail the first N
attempts of each event, answer a fixed status, ask for Retry-After, or be slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass(slots=True)
class Received:
    webhook_id: str
    type: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.time() when it arrived
    verified: bool
    raw: bytes = b""  # the body as it came (what a signature covers)


@dataclass
class Behaviour:
    fail_first: int = 0  # answer `fail_status` to the first N attempts of each webhook-id
    fail_status: int = 500
    status: int = 200  # answer for the rest
    retry_after: str | None = None
    delay: float = 0.0  # seconds to wait before answering
    body: bytes = b"ok"


@dataclass
class Receiver:
    secret: str | None = None
    behaviour: Behaviour = field(default_factory=Behaviour)
    attempts: list[Received] = field(default_factory=list)  # every request, in arrival order
    accepted: list[Received] = field(default_factory=list)  # those answered 2xx
    on_accept: Callable[[Received], Awaitable[None] | None] | None = None
    _tries: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    def url(self, base_url: str, path: str = "hook") -> str:
        return f"{base_url}/{path}"

    def unique(self) -> dict[str, Received]:
        """Accepted callbacks deduplicated by webhook-id (what a receiver acts on)."""
        return {r.webhook_id: r for r in self.accepted}

    def duplicates(self) -> int:
        return len(self.accepted) - len(self.unique())

    def by_job(self) -> dict[str, list[Received]]:
        jobs: dict[str, list[Received]] = defaultdict(list)
        for r in self.accepted:
            jobs[r.body["data"]["video_model_id"]].append(r)
        return jobs

    async def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float) -> None:
        """Wait until predicate(self) holds; raises TimeoutError with what arrived so far."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"receiver: {len(self.accepted)} accepted, {len(self.attempts)} attempts")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.5))

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = False
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(raw, headers)
                verified = True
            except WebhookVerificationError:
                return JSONResponse({"detail": "bad signature"}, status_code=400)
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse({"detail": "not JSON"}, status_code=400)
        webhook_id = headers.get("webhook-id", "")
        record = Received(webhook_id, body.get("type", ""), body, headers, time.time(), verified, raw)
        self.attempts.append(record)
        self._tries[webhook_id] += 1
        b = self.behaviour
        if b.delay:
            await asyncio.sleep(b.delay)
        status = b.fail_status if self._tries[webhook_id] <= b.fail_first else b.status
        extra = {"retry-after": b.retry_after} if b.retry_after else None
        if 200 <= status < 300:
            self.accepted.append(record)
            if self.on_accept is not None:
                result = self.on_accept(record)
                if asyncio.iscoroutine(result):
                    await result
        self._arrived.set()
        return Response(b.body, status_code=status, headers=extra)
