"""Signing (the standardwebhooks package) and sending one callback attempt, SSRF-safe.

The sender never raises for the receiver's trouble: every outcome is an `AttemptResult`, which the
outbox stores as an attempt row.
"""

from __future__ import annotations

import asyncio
import time
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


class WebhookSender:
    def __init__(self, secret: str, http: httpx.AsyncClient, timeout: float) -> None:
        self._signer = Webhook(secret)
        self._http = http
        self._timeout = timeout

    def headers(self, webhook_id: str, body: str, at: datetime) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": self._signer.sign(webhook_id, at, body),
            "user-agent": f"akool-relay/{__version__}",
        }

    async def send(self, url: str, webhook_id: str, body: str) -> AttemptResult:
        started = time.perf_counter()
        headers = self.headers(webhook_id, body, datetime.now(UTC))
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
