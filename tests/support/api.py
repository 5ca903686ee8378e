"""Shared by the test_api_*.py files: the HTTP API of SPEC §3 over real HTTP, on SQLite and PostgreSQL.

Ids starting with `unknown` never exist at the simulator, so those jobs stay `pending` for the whole
test (the not-found grace is the default 60 s); other ids complete within a second.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

OTHER_HOOK = "http://127.0.0.1:9/other"

JOB_FIELDS = {
    "video_model_id",
    "status",
    "video_status",
    "progress",
    "video_url",
    "error_code",
    "error_reason",
    "audio_splits",
    "callback_url",
    "events",
    "metadata",
    "created_at",
    "updated_at",
    "finished_at",
    "last_polled_at",
    "next_poll_at",
    "poll_count",
    "delivery",
}
STATUSES = {"pending", "queueing", "processing", "completed", "failed", "expired", "cancelled"}
DELIVERY_STATES = {"pending", "retrying", "delivered", "dead"}


def errors_of(response: httpx.Response) -> list[dict[str, Any]]:
    """The field errors of a 422, each with a location and a message."""
    assert response.status_code == 422, f"{response.status_code}: {response.text}"
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    for error in detail:
        assert error["msg"], error
        assert "loc" in error, error
    return detail


def assert_field_error(response: httpx.Response, field: str) -> list[dict[str, Any]]:
    detail = errors_of(response)
    assert any(field in [str(part) for part in e["loc"]] for e in detail), f"{field} not named in {detail}"
    return detail


def assert_item_field_error(item: dict[str, Any], field: str) -> None:
    assert item["status"] == 422, item
    detail = item["detail"]
    assert isinstance(detail, list) and detail, item
    assert any(field in [str(part) for part in e["loc"]] for e in detail), f"{field} not named in {detail}"
    assert all(e["msg"] for e in detail)


def assert_detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


def is_utc(value: str) -> bool:
    return datetime.fromisoformat(value).utcoffset() == timedelta(0)
