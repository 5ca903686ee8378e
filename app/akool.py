"""The Akool client. Every answer is classified here, in one place, into a `PollResult`.

PollResult.kind
├── OK            code 1000: `data` is the job as Akool sees it (a failed job is OK too)
├── NOT_FOUND     1008 / 1014: this id is unknown (fails the job only after the grace)
├── THROTTLED     1005: slow the whole process down
├── AUTH_FAILED   1101 / 1102 / 1200 / 1009: our credentials; pauses polling for everyone
├── BILLING       1103 / 1104 / 1006 / 1213 / 1221: the account; pauses polling for everyone
└── TRANSIENT     2001, other codes, non-200, timeouts, connection errors, bodies that are not
                  the envelope: conclude nothing, try this job again later
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx
from pydantic import SecretStr

from app.config import Settings

INFO_PATH = "/api/open/v3/content/video/infobymodelid"
TOKEN_PATH = "/api/open/v3/getToken"

CODE_OK = 1000


class AnswerKind(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    THROTTLED = "throttled"
    AUTH_FAILED = "auth_failed"
    BILLING = "billing"
    TRANSIENT = "transient"


CODES: dict[int, AnswerKind] = {
    1005: AnswerKind.THROTTLED,
    1101: AnswerKind.AUTH_FAILED,
    1102: AnswerKind.AUTH_FAILED,
    1200: AnswerKind.AUTH_FAILED,
    1009: AnswerKind.AUTH_FAILED,
    1008: AnswerKind.NOT_FOUND,
    1014: AnswerKind.NOT_FOUND,
    1103: AnswerKind.BILLING,
    1104: AnswerKind.BILLING,
    1006: AnswerKind.BILLING,
    1213: AnswerKind.BILLING,
    1221: AnswerKind.BILLING,
}

# Kinds that say something about our account rather than one job: they pause polling.
PAUSING = frozenset({AnswerKind.AUTH_FAILED, AnswerKind.BILLING})


@dataclass(frozen=True)
class PollResult:
    kind: AnswerKind
    data: dict[str, Any] | None = None
    code: int | None = None
    detail: str = ""  # short, safe to show on the dashboard (never contains credentials)
    latency: float = 0.0


def classify(status_code: int, body: Any) -> PollResult:
    """Turn one HTTP answer (status and decoded JSON, or None when it was not JSON) into a result."""
    if status_code == 401:
        return PollResult(AnswerKind.AUTH_FAILED, code=None, detail="HTTP 401")
    if status_code != 200:
        return PollResult(AnswerKind.TRANSIENT, detail=f"HTTP {status_code}")
    if not isinstance(body, dict) or not isinstance(body.get("code"), int) or isinstance(body["code"], bool):
        return PollResult(AnswerKind.TRANSIENT, detail="answer is not Akool's envelope")
    code: int = body["code"]
    msg = str(body.get("msg") or "")[:200]
    if code == CODE_OK:
        data = body.get("data")
        if not isinstance(data, dict):
            return PollResult(AnswerKind.TRANSIENT, code=code, detail="code 1000 without a data object")
        return PollResult(AnswerKind.OK, data=data, code=code)
    return PollResult(CODES.get(code, AnswerKind.TRANSIENT), code=code, detail=f"code {code}: {msg}".strip())


class AkoolClient:
    """Akool's info endpoint over httpx clients used in turn; API key or cached getToken token,
    fetched again on 1101 / HTTP 401."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient | Sequence[httpx.AsyncClient]) -> None:
        self._settings = settings
        # Several small clients, used in turn: httpcore scans its whole pool on every request and
        # response (the biggest cost in the poll profile), so pools of 8 cost a quarter of one of 32.
        clients = [http] if isinstance(http, httpx.AsyncClient) else list(http)
        self._clients = itertools.cycle(clients)
        self._http = clients[0]  # getToken: rare, any client will do
        self._token: str | None = None
        self._token_lock = asyncio.Lock()

    @property
    def uses_token(self) -> bool:
        return self._settings.uses_token

    async def _headers(self) -> dict[str, str]:
        if self.uses_token:
            return {"Authorization": f"Bearer {await self._get_token()}"}
        key = self._settings.akool_api_key
        return {"x-api-key": key.get_secret_value()} if key is not None else {}

    async def _get_token(self) -> str:
        async with self._token_lock:
            if self._token is None:
                secret = self._settings.akool_client_secret
                response = await self._http.post(
                    self._settings.akool_base_url + TOKEN_PATH,
                    json={
                        "clientId": self._settings.akool_client_id,
                        "clientSecret": secret.get_secret_value() if secret else "",
                    },
                )
                body = _json_or_none(response)
                token = body.get("token") if isinstance(body, dict) else None
                accepted = (
                    response.status_code == 200 and isinstance(body, dict) and body.get("code") == CODE_OK
                )
                if not accepted or not isinstance(token, str):
                    raise TokenRefused(classify(response.status_code, body))
                self._token = token
            return self._token

    async def fetch(self, video_model_id: str) -> PollResult:
        """Ask Akool about one job. Never raises for upstream trouble: it is all in the result."""
        started = time.perf_counter()
        result = await self._fetch_once(video_model_id)
        if result.kind == AnswerKind.AUTH_FAILED and self.uses_token and result.code in (1101, None):
            self._token = None  # the token expired or was revoked: fetch a new one and ask again once
            result = await self._fetch_once(video_model_id)
        detail = self._redact(result.detail)
        return PollResult(result.kind, result.data, result.code, detail, time.perf_counter() - started)

    def _redact(self, text: str) -> str:
        """Akool's `msg` is shown on the dashboard; never let it carry our credentials back out."""
        s = self._settings
        for secret in (s.akool_api_key, s.akool_client_secret, self._token):
            value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            if value:
                text = text.replace(value, "***")
        return text

    async def _fetch_once(self, video_model_id: str) -> PollResult:
        try:
            headers = await self._headers()
            response = await next(self._clients).get(
                self._settings.akool_base_url + INFO_PATH,
                params={"video_model_id": video_model_id},
                headers=headers,
            )
        except TokenRefused as exc:
            return exc.result
        except httpx.TimeoutException:
            return PollResult(AnswerKind.TRANSIENT, detail="timeout")
        except httpx.HTTPError as exc:
            return PollResult(AnswerKind.TRANSIENT, detail=f"{type(exc).__name__}")
        return classify(response.status_code, _json_or_none(response))


class TokenRefused(Exception):
    def __init__(self, result: PollResult) -> None:
        super().__init__(result.detail)
        self.result = (
            result
            if result.kind != AnswerKind.OK
            else PollResult(AnswerKind.AUTH_FAILED, detail="getToken gave no token")
        )


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
