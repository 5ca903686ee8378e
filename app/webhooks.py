"""Signing (the standardwebhooks package) and sending one callback attempt, SSRF-safe.

The sender never raises for the receiver's trouble: every outcome is an `AttemptResult`, which the
outbox stores as an attempt row. Each callback is signed with every secret its tenant holds valid
(`SecretsOf`), newest first: during a rotation a receiver verifies with the old or the new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from standardwebhooks import Webhook

from app import __version__

EXCERPT_BYTES = 1024  # of a receiver's answer we keep; the rest is never read


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    duration_ms: float
    retry_after: float | None = None
    excerpt: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


SecretsOf = Callable[[int], Awaitable[list[str]]]
"""A tenant id → the secrets its callbacks are signed with now, newest first."""

SECRETS_TTL = 1.0  # seconds a tenant's secrets are reused before they are read again


class WebhookSender:
    def __init__(self, secrets_of: SecretsOf, http: httpx.AsyncClient, timeout: float) -> None:
        self._secrets_of = secrets_of
        self._secrets: dict[int, tuple[float, list[Webhook]]] = {}  # tenant → (read at, signers)
        self._http = http
        self._timeout = timeout

    async def _signers(self, tenant_id: int) -> list[Webhook]:
        # Read at most once a second per tenant: a rotation is seen within that, a grace's end too.
        read_at, signers = self._secrets.get(tenant_id, (-SECRETS_TTL, []))
        if time.monotonic() - read_at >= SECRETS_TTL:
            signers = [Webhook(secret) for secret in await self._secrets_of(tenant_id)]
            self._secrets[tenant_id] = (time.monotonic(), signers)
        return signers

    async def headers(self, tenant_id: int, webhook_id: str, body: str, at: datetime) -> dict[str, str]:
        signers = await self._signers(tenant_id)
        return {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(at.timestamp())),
            # One `v1,<signature>` per valid secret, space-separated (Standard Webhooks).
            "webhook-signature": " ".join(signer.sign(webhook_id, at, body) for signer in signers),
            "user-agent": f"akool-relay/{__version__}",
        }

    async def send(self, tenant_id: int, url: str, webhook_id: str, body: str) -> AttemptResult:
        started = time.perf_counter()
        headers = await self.headers(tenant_id, webhook_id, body, datetime.now(UTC))
        try:
            # The whole attempt, not each socket operation, is bounded by the delivery timeout.
            async with asyncio.timeout(self._timeout):
                async with self._http.stream("POST", url, content=body.encode(), headers=headers) as response:
                    excerpt = await _read_excerpt(response)
            elapsed = (time.perf_counter() - started) * 1000
            error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
            return AttemptResult(
                response.status_code,
                error,
                elapsed,
                parse_retry_after(response.headers.get("retry-after")),
                excerpt,
            )
        except TimeoutError:
            error = f"no answer within {self._timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        return AttemptResult(None, error, (time.perf_counter() - started) * 1000)


async def _read_excerpt(response: httpx.Response) -> str | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size >= EXCERPT_BYTES:
            break
    data = b"".join(chunks)[:EXCERPT_BYTES]
    return data.decode("utf-8", "replace") if data else None
