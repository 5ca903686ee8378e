"""The Akool client. Every answer is classified here, in one place, into a `PollResult`.

PollResult.kind
├── OK            code 1000: `data` is the job as Akool sees it (a failed job is OK too)
├── NOT_FOUND     1008 / 1014: this id is unknown (fails the job only after the grace)
├── THROTTLED     1005: slow the whole process down
├── AUTH_FAILED   1101 / 1102 / 1200 / 1009: our credentials; pauses polling for everyone
├── BILLING       1103 / 1104 / 1006 / 1213 / 1221: the account; pauses polling for everyone
└── TRANSIENT     2001, other codes, non-200, timeouts, connection errors, bodies that are not
                  the envelope: conclude nothing, try this job again later

A createbytranslate is classified here too, into a `CreateResult` (`classify_create`):

CreateResult.kind
├── OK            code 1000: `data` (and `all_results` for several languages); `entries` says, per
│                 language, the id Akool made or why it made none
├── REJECTED      another business code (or HTTP 401/403): Akool refused; nothing was made
├── NOT_SENT      no byte of the request left us (connection refused, DNS, getToken failed, no slot
│                 before the deadline): nothing was made, the same request may be sent again
└── UNKNOWN       sent, but no usable answer (timeout, connection lost, HTTP 5xx, not the envelope,
                  code 1000 without an id): Akool may have made (and charged for) jobs; never resend
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import httpx
from pydantic import SecretStr

from app.config import Settings

INFO_PATH = "/api/open/v3/content/video/infobymodelid"
TOKEN_PATH = "/api/open/v3/getToken"
CREATE_PATH = "/api/open/v3/content/video/createbytranslate"

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


class CreateKind(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    NOT_SENT = "not_sent"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CreateEntry:
    """One language of a create: the id Akool made (code 1000), or its code and message."""

    language: str | None
    video_model_id: str | None
    code: int | None
    msg: str = ""


@dataclass(frozen=True)
class CreateResult:
    kind: CreateKind
    data: dict[str, Any] | None = None
    all_results: list[Any] | None = None
    entries: tuple[CreateEntry, ...] = ()
    code: int | None = None
    detail: str = ""  # Akool's msg for REJECTED, else what happened; safe to show (redacted)
    latency: float = 0.0


def requested_languages(body: dict[str, Any]) -> list[str]:
    """The languages of a createbytranslate body, in order (`language` is comma-separated)."""
    language = body.get("language")
    if not isinstance(language, str):
        return []
    return [part.strip() for part in language.split(",") if part.strip()]


def classify_create(status_code: int, body: Any, languages: Sequence[str] = ()) -> CreateResult:
    """Turn createbytranslate's answer (status and decoded JSON, or None) into a result. The request
    was sent, so whatever is not a clear yes or a clear no is UNKNOWN."""
    if status_code in (401, 403):
        return CreateResult(CreateKind.REJECTED, detail=f"HTTP {status_code}")
    if status_code != 200:
        return CreateResult(CreateKind.UNKNOWN, detail=f"HTTP {status_code}")
    if not isinstance(body, dict) or not isinstance(body.get("code"), int) or isinstance(body["code"], bool):
        return CreateResult(CreateKind.UNKNOWN, detail="answer is not Akool's envelope")
    code: int = body["code"]
    msg = str(body.get("msg") or "")[:500]
    if code != CODE_OK:
        return CreateResult(CreateKind.REJECTED, code=code, detail=msg or f"code {code}")
    data = body.get("data")
    if not isinstance(data, dict):
        return CreateResult(CreateKind.UNKNOWN, code=code, detail="code 1000 without a data object")
    all_results = body.get("all_results")
    if isinstance(all_results, list) and all_results:
        entries = tuple(
            _entry(item, languages[i] if i < len(languages) else None) for i, item in enumerate(all_results)
        )
        return CreateResult(CreateKind.OK, data, all_results, entries, code)
    vid = data.get("_id")
    if not isinstance(vid, str) or not vid:
        return CreateResult(CreateKind.UNKNOWN, code=code, detail="code 1000 without an _id")
    language = data.get("language")
    if not isinstance(language, str):
        language = ",".join(languages) or None
    return CreateResult(CreateKind.OK, data, None, (CreateEntry(language, vid, code, msg),), code)


def _entry(item: Any, language: str | None) -> CreateEntry:
    """One `all_results` item: {code, msg, data: {_id, language?, ...}}."""
    if not isinstance(item, dict):
        return CreateEntry(language, None, None, "not an object in all_results")
    data = item.get("data")
    data = data if isinstance(data, dict) else {}
    if isinstance(data.get("language"), str):
        language = data["language"]
    code = item.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    msg = str(item.get("msg") or "")[:500]
    vid = data.get("_id")
    if code == CODE_OK and isinstance(vid, str) and vid:
        return CreateEntry(language, vid, code, msg)
    if code == CODE_OK:
        return CreateEntry(language, None, code, "code 1000 without an _id")
    return CreateEntry(language, None, code, msg or (f"code {code}" if code is not None else "no code"))


class AkoolClient:
    """Akool's info endpoint over httpx clients used in turn; API key or cached getToken token,
    fetched again on 1101 / HTTP 401."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient | Sequence[httpx.AsyncClient],
        *,
        create_http: Callable[[], httpx.AsyncClient] | None = None,
        acquire: Callable[[], Awaitable[None]] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`create_http`: makes the client a create is sent with (default: a fresh one per create,
        with the `tls` context the other clients share).
        `acquire`: waits for a request slot of the Akool budget (app/worker/budget.py); awaited here
        before every getToken and infobymodelid request (a create waits for its own slot)."""
        self._settings = settings
        # Several small clients, used in turn: httpcore scans its whole pool on every request and
        # response (the biggest cost in the poll profile), so pools of 8 cost a quarter of one of 32.
        clients = [http] if isinstance(http, httpx.AsyncClient) else list(http)
        self._clients = itertools.cycle(clients)
        self._http = clients[0]  # getToken: rare, any client will do
        self._token: str | None = None
        self._token_lock = asyncio.Lock()
        self._create_http = create_http or self._fresh_client
        self._tls: ssl.SSLContext | bool = tls if tls is not None else True
        self._acquire = acquire or _no_wait

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
                await self._acquire()
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
        result = await self._fetch_once(video_model_id)
        latency = result.latency
        if result.kind == AnswerKind.AUTH_FAILED and self.uses_token and result.code in (1101, None):
            self._token = None  # the token expired or was revoked: fetch a new one and ask again once
            result = await self._fetch_once(video_model_id)
            latency += result.latency
        detail = self._redact(result.detail)
        return PollResult(result.kind, result.data, result.code, detail, latency)

    def _redact(self, text: str) -> str:
        """Akool's `msg` is shown on the dashboard; never let it carry our credentials back out."""
        s = self._settings
        for secret in (s.akool_api_key, s.akool_client_secret, self._token):
            value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            if value:
                text = text.replace(value, "***")
        return text

    async def _fetch_once(self, video_model_id: str) -> PollResult:
        """One infobymodelid request; its latency counts from when it had its slot."""
        started = time.perf_counter()
        try:
            headers = await self._headers()
            await self._acquire()
            started = time.perf_counter()
            response = await next(self._clients).get(
                self._settings.akool_base_url + INFO_PATH,
                params={"video_model_id": video_model_id},
                headers=headers,
            )
        except TokenRefused as exc:
            return exc.result
        except httpx.TimeoutException:
            result = PollResult(AnswerKind.TRANSIENT, detail="timeout")
        except httpx.HTTPError as exc:
            result = PollResult(AnswerKind.TRANSIENT, detail=f"{type(exc).__name__}")
        else:
            result = classify(response.status_code, _json_or_none(response))
        return replace(result, latency=time.perf_counter() - started)

    def _fresh_client(self) -> httpx.AsyncClient:
        # A new connection for every create: a kept-alive one the server has just closed would fail
        # after our bytes went out, and we could not tell whether Akool read them.
        return httpx.AsyncClient(
            headers=self._http.headers, timeout=self._settings.akool_timeout, verify=self._tls
        )

    async def create_translation(
        self,
        body: dict[str, Any],
        *,
        timeout: float,
        wait_for_slot: Callable[[], Awaitable[None]] | None = None,
    ) -> CreateResult:
        """POST createbytranslate once, never again: a create resent makes a second paid job.

        Everything (the wait for a request slot, getToken, the request) ends within `timeout`
        seconds. Never raises for upstream trouble: NOT_SENT when no byte of the request left us,
        UNKNOWN when it did and no clear answer came back.
        """
        started = time.perf_counter()
        sent = False

        async def trace(event: str, _info: dict[str, Any]) -> None:
            nonlocal sent
            if event.endswith("send_request_headers.started"):
                sent = True

        try:
            async with asyncio.timeout(timeout):
                if wait_for_slot is not None:
                    await wait_for_slot()
                try:
                    headers = await self._headers()
                except TokenRefused as exc:
                    reason = exc.result.detail or "getToken refused"
                    result = CreateResult(CreateKind.NOT_SENT, code=exc.result.code, detail=reason)
                else:
                    async with self._create_http() as http:
                        response = await http.post(
                            self._settings.akool_base_url + CREATE_PATH,
                            json=body,
                            headers=headers,
                            extensions={"trace": trace},
                        )
                    result = classify_create(
                        response.status_code, _json_or_none(response), requested_languages(body)
                    )
        except TimeoutError:
            result = CreateResult(CreateKind.UNKNOWN if sent else CreateKind.NOT_SENT, detail="timeout")
        except httpx.HTTPError as exc:
            name = type(exc).__name__
            result = CreateResult(CreateKind.UNKNOWN if sent else CreateKind.NOT_SENT, detail=name)
        if self.uses_token and (result.code == 1101 or result.detail == "HTTP 401"):
            self._token = None  # the next request fetches a new token (this one is not sent again)
        return CreateResult(
            result.kind,
            result.data,
            result.all_results,
            result.entries,
            result.code,
            self._redact(result.detail),
            time.perf_counter() - started,
        )


async def _no_wait() -> None:
    return None


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
