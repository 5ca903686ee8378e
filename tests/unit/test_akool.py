"""The Akool client: `classify()` for every answer of SPEC §1, and AkoolClient over httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.akool import CODES, INFO_PATH, PAUSING, TOKEN_PATH, AkoolClient, AnswerKind, PollResult, classify
from app.config import Settings, load_settings

BASE = "http://akool.test"
API_KEY = "ak-live-0123456789abcdefSECRET"
CLIENT_ID = "client-id-42"
CLIENT_SECRET = "cs-very-secret-9876543210"

JOB_DATA = {
    "_id": "64f0",
    "video_status": 2,
    "video": "",
    "progress": 40,
    "create_time": 1700000000000,
    "something_new": True,
}


def envelope(code: int, data: Any = None, msg: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "msg": msg}
    if data is not None:
        body["data"] = data
    return body


# -- classify ----------------------------------------------------------------------------------------


def test_code_1000_with_data_is_ok_and_keeps_the_data() -> None:
    r = classify(200, envelope(1000, JOB_DATA, "OK"))
    assert r.kind == AnswerKind.OK
    assert r.data == JOB_DATA
    assert r.code == 1000


def test_code_1000_for_a_failed_job_is_still_ok() -> None:
    data = {"video_status": 4, "error_code": 100203, "error_reason": "no speech"}
    r = classify(200, envelope(1000, data))
    assert r.kind == AnswerKind.OK
    assert r.data == data


@pytest.mark.parametrize("data", [None, [], "x", 3, [JOB_DATA]], ids=repr)
def test_code_1000_without_a_data_object_is_transient(data: Any) -> None:
    body: dict[str, Any] = {"code": 1000, "msg": "OK"}
    if data is not None:
        body["data"] = data
    r = classify(200, body)
    assert r.kind == AnswerKind.TRANSIENT
    assert r.data is None
    assert r.detail


def test_code_1005_is_throttled() -> None:
    r = classify(200, envelope(1005, msg="Operation is too frequent"))
    assert r.kind == AnswerKind.THROTTLED
    assert r.code == 1005
    assert "1005" in r.detail


@pytest.mark.parametrize("code", [1101, 1102, 1200, 1009])
def test_credential_codes_are_auth_failed(code: int) -> None:
    r = classify(200, envelope(code, msg="nope"))
    assert r.kind == AnswerKind.AUTH_FAILED
    assert r.code == code
    assert str(code) in r.detail
    assert r.kind in PAUSING


@pytest.mark.parametrize("code", [1008, 1014])
def test_does_not_exist_codes_are_not_found(code: int) -> None:
    r = classify(200, envelope(code, msg="The content you get does not exist."))
    assert r.kind == AnswerKind.NOT_FOUND
    assert r.code == code
    assert r.kind not in PAUSING


@pytest.mark.parametrize("code", [1103, 1104, 1006, 1213, 1221])
def test_billing_codes_are_billing(code: int) -> None:
    r = classify(200, envelope(code, msg="insufficient credit"))
    assert r.kind == AnswerKind.BILLING
    assert r.code == code
    assert r.kind in PAUSING


def test_2001_is_transient() -> None:
    r = classify(200, envelope(2001, msg="server error"))
    assert r.kind == AnswerKind.TRANSIENT
    assert r.code == 2001


@pytest.mark.parametrize("code", [0, 1, 999, 1001, 1007, 1500, 3000, 99999, -1])
def test_an_unknown_code_is_transient(code: int) -> None:
    r = classify(200, envelope(code, msg="who knows"))
    assert r.kind == AnswerKind.TRANSIENT
    assert r.code == code


def test_the_code_table_covers_spec_section_1() -> None:
    expected = {
        1005: AnswerKind.THROTTLED,
        **dict.fromkeys((1101, 1102, 1200, 1009), AnswerKind.AUTH_FAILED),
        **dict.fromkeys((1008, 1014), AnswerKind.NOT_FOUND),
        **dict.fromkeys((1103, 1104, 1006, 1213, 1221), AnswerKind.BILLING),
    }
    assert expected == CODES


@pytest.mark.parametrize("status", [500, 502, 503, 504, 404, 429, 302, 201, 204])
def test_http_status_other_than_200_is_transient(status: int) -> None:
    # Even with a body that looks like success: the status decides.
    r = classify(status, envelope(1000, JOB_DATA))
    assert r.kind == AnswerKind.TRANSIENT
    assert r.data is None
    assert str(status) in r.detail


def test_http_401_is_auth_failed() -> None:
    r = classify(401, None)
    assert r.kind == AnswerKind.AUTH_FAILED
    assert r.kind in PAUSING


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        [envelope(1000, JOB_DATA)],
        "OK",
        1000,
        {},
        {"code": "1000", "data": JOB_DATA},
        {"code": True, "data": JOB_DATA},
        {"code": 1000.0, "data": JOB_DATA},
        {"code": None},
        {"msg": "hi"},
    ],
    ids=repr,
)
def test_bodies_that_are_not_the_envelope_are_transient(body: Any) -> None:
    r = classify(200, body)
    assert r.kind == AnswerKind.TRANSIENT
    assert r.data is None
    assert r.detail


def test_a_long_message_is_shortened() -> None:
    r = classify(200, envelope(2001, msg="x" * 5000))
    assert len(r.detail) < 300


# -- AkoolClient over MockTransport ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No stray .env or environment variable changes the settings these tests build."""
    monkeypatch.chdir(tmp_path)
    for field in Settings.model_fields.values():
        if field.alias:
            monkeypatch.delenv(field.alias, raising=False)


def key_settings() -> Settings:
    return load_settings(AKOOL_API_KEY=API_KEY, AKOOL_BASE_URL=BASE)


def token_settings() -> Settings:
    return load_settings(AKOOL_CLIENT_ID=CLIENT_ID, AKOOL_CLIENT_SECRET=CLIENT_SECRET, AKOOL_BASE_URL=BASE)


Handler = Callable[[httpx.Request], httpx.Response]


class FakeAkool:
    """Records requests; `info` and `token` decide the answers."""

    def __init__(self, info: Handler | None = None, token: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.info_requests: list[httpx.Request] = []
        self.token_requests: list[httpx.Request] = []
        self._info = info or (lambda _r: httpx.Response(200, json=envelope(1000, JOB_DATA)))
        self._token = token
        self.issued = 0
        self.valid_tokens: set[str] = set()

    def issue(self, request: httpx.Request) -> httpx.Response:
        self.issued += 1
        token = f"tok-{self.issued}"
        self.valid_tokens.add(token)
        return httpx.Response(200, json={"code": 1000, "msg": "OK", "token": token})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == TOKEN_PATH:
            self.token_requests.append(request)
            return (self._token or self.issue)(request)
        assert request.url.path == INFO_PATH, request.url
        self.info_requests.append(request)
        return self._info(request)


def client_for(settings: Settings, fake: FakeAkool) -> tuple[AkoolClient, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    return AkoolClient(settings, http), http


def assert_no_secret(result: PollResult) -> None:
    for secret in (API_KEY, CLIENT_SECRET):
        assert secret not in result.detail
        assert secret not in repr(result)


async def test_api_key_mode_sends_x_api_key_and_the_id() -> None:
    fake = FakeAkool()
    client, http = client_for(key_settings(), fake)
    async with http:
        result = await client.fetch("vid-1")
    assert result.kind == AnswerKind.OK
    assert result.data == JOB_DATA
    assert result.latency >= 0
    [req] = fake.requests
    assert req.method == "GET"
    assert str(req.url).startswith(BASE + INFO_PATH)
    assert req.url.params["video_model_id"] == "vid-1"
    assert req.headers["x-api-key"] == API_KEY
    assert "authorization" not in req.headers
    assert fake.token_requests == []
    assert not client.uses_token


async def test_the_id_is_url_encoded_as_a_query_parameter() -> None:
    fake = FakeAkool()
    client, http = client_for(key_settings(), fake)
    async with http:
        await client.fetch("a_b-C9")
    assert fake.info_requests[0].url.params["video_model_id"] == "a_b-C9"


async def test_token_mode_fetches_a_token_once_and_caches_it() -> None:
    fake = FakeAkool()

    def info(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        if auth.removeprefix("Bearer ") in fake.valid_tokens:
            return httpx.Response(200, json=envelope(1000, JOB_DATA))
        return httpx.Response(200, json=envelope(1101, msg="Invalid authorization"))

    fake._info = info
    client, http = client_for(token_settings(), fake)
    async with http:
        assert client.uses_token
        for i in range(3):
            result = await client.fetch(f"vid-{i}")
            assert result.kind == AnswerKind.OK, result
    assert len(fake.token_requests) == 1
    token_req = fake.token_requests[0]
    assert token_req.method == "POST"
    assert str(token_req.url) == BASE + TOKEN_PATH
    assert json.loads(token_req.content) == {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}
    for req in fake.info_requests:
        assert req.headers["authorization"] == "Bearer tok-1"
        assert "x-api-key" not in req.headers


async def test_concurrent_fetches_share_one_token_request() -> None:
    fake = FakeAkool()
    client, http = client_for(token_settings(), fake)
    async with http:
        results = await asyncio.gather(*(client.fetch(f"vid-{i}") for i in range(10)))
    assert all(r.kind == AnswerKind.OK for r in results)
    assert len(fake.token_requests) == 1


@pytest.mark.parametrize("refusal", ["code_1101", "http_401"])
async def test_token_mode_refetches_the_token_when_it_is_refused_then_succeeds(refusal: str) -> None:
    fake = FakeAkool()

    def info(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "").removeprefix("Bearer ")
        if auth in fake.valid_tokens:
            return httpx.Response(200, json=envelope(1000, JOB_DATA))
        if refusal == "http_401":
            return httpx.Response(401, text="Unauthorized")
        return httpx.Response(200, json=envelope(1101, msg="token expired"))

    fake._info = info
    client, http = client_for(token_settings(), fake)
    async with http:
        assert (await client.fetch("vid-1")).kind == AnswerKind.OK
        fake.valid_tokens.clear()  # Akool revokes the token
        result = await client.fetch("vid-2")
        assert result.kind == AnswerKind.OK, result
        assert result.data == JOB_DATA
        # the new token is cached again
        assert (await client.fetch("vid-3")).kind == AnswerKind.OK
    assert len(fake.token_requests) == 2
    auths = [r.headers["authorization"] for r in fake.info_requests]
    assert auths == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2", "Bearer tok-2"]


async def test_token_refused_twice_is_auth_failed_not_an_exception() -> None:
    fake = FakeAkool(info=lambda _r: httpx.Response(200, json=envelope(1101, msg="token expired")))
    client, http = client_for(token_settings(), fake)
    async with http:
        result = await client.fetch("vid-1")
    assert result.kind == AnswerKind.AUTH_FAILED
    assert len(fake.info_requests) == 2  # asked once more with a fresh token, not in a loop
    assert len(fake.token_requests) == 2
    assert_no_secret(result)


async def test_get_token_refused_is_auth_failed() -> None:
    fake = FakeAkool(token=lambda _r: httpx.Response(200, json={"code": 1101, "msg": "bad client"}))
    client, http = client_for(token_settings(), fake)
    async with http:
        result = await client.fetch("vid-1")
    assert result.kind == AnswerKind.AUTH_FAILED
    assert fake.info_requests == []
    assert_no_secret(result)


async def test_get_token_without_a_token_is_not_ok() -> None:
    fake = FakeAkool(token=lambda _r: httpx.Response(200, json={"code": 1000, "msg": "OK"}))
    client, http = client_for(token_settings(), fake)
    async with http:
        result = await client.fetch("vid-1")
    # A malformed getToken answer: either reading is defensible, but never OK and never a raise.
    assert result.kind in (AnswerKind.AUTH_FAILED, AnswerKind.TRANSIENT)
    assert fake.info_requests == []


async def test_get_token_server_error_is_transient() -> None:
    fake = FakeAkool(token=lambda _r: httpx.Response(502, text="bad gateway"))
    client, http = client_for(token_settings(), fake)
    async with http:
        result = await client.fetch("vid-1")
    assert result.kind == AnswerKind.TRANSIENT


async def test_get_token_connection_error_is_transient() -> None:
    def token(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fake = FakeAkool(token=token)
    client, http = client_for(token_settings(), fake)
    async with http:
        result = await client.fetch("vid-1")
    assert result.kind == AnswerKind.TRANSIENT
    assert_no_secret(result)


@pytest.mark.parametrize(
    "exc",
    [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.WriteTimeout, httpx.PoolTimeout],
    ids=lambda e: e.__name__,
)
async def test_timeouts_are_transient(exc: type[httpx.TimeoutException]) -> None:
    def info(request: httpx.Request) -> httpx.Response:
        raise exc("timed out", request=request)

    client, http = client_for(key_settings(), FakeAkool(info=info))
    async with http:
        result = await client.fetch("vid-1")
    assert result.kind == AnswerKind.TRANSIENT
    assert "timeout" in result.detail.lower()
    assert_no_secret(result)


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError],
    ids=lambda e: e.__name__,
)
async def test_connection_errors_are_transient(exc: type[httpx.TransportError]) -> None:
    def info(request: httpx.Request) -> httpx.Response:
        raise exc(f"failed talking to {request.url} with key {API_KEY}", request=request)

    client, http = client_for(key_settings(), FakeAkool(info=info))
    async with http:
        result = await client.fetch("vid-1")
    assert result.kind == AnswerKind.TRANSIENT
    assert result.detail
    assert_no_secret(result)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>gateway</html>"),
        httpx.Response(200, text=""),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(200, json={"code": "1000", "data": JOB_DATA}),
        httpx.Response(500, json=envelope(1000, JOB_DATA)),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(200, json=envelope(2001, msg="server error")),
    ],
    ids=["html", "empty", "list", "string-code", "500", "502", "2001"],
)
async def test_upstream_garbage_is_transient(response: httpx.Response) -> None:
    client, http = client_for(key_settings(), FakeAkool(info=lambda _r: response))
    async with http:
        result = await client.fetch("vid-1")
    assert result.kind == AnswerKind.TRANSIENT
    assert result.data is None


async def test_key_mode_401_is_auth_failed_without_a_retry() -> None:
    fake = FakeAkool(info=lambda _r: httpx.Response(401, text="no"))
    client, http = client_for(key_settings(), fake)
    async with http:
        result = await client.fetch("vid-1")
    assert result.kind == AnswerKind.AUTH_FAILED
    assert len(fake.info_requests) == 1
    assert fake.token_requests == []
    assert_no_secret(result)


@pytest.mark.parametrize("code", [1101, 1103, 2001])
async def test_details_never_contain_the_api_key(code: int) -> None:
    # Even an upstream that echoes the key back in its message must not put it on the dashboard.
    fake = FakeAkool(info=lambda _r: httpx.Response(200, json=envelope(code, msg=f"bad key {API_KEY}")))
    client, http = client_for(key_settings(), fake)
    async with http:
        result = await client.fetch("vid-1")
    assert result.kind == CODES.get(code, AnswerKind.TRANSIENT)
    assert_no_secret(result)


async def test_details_never_contain_the_client_secret() -> None:
    fake = FakeAkool(
        token=lambda _r: httpx.Response(200, json={"code": 1101, "msg": f"bad secret {CLIENT_SECRET}"})
    )
    client, http = client_for(token_settings(), fake)
    async with http:
        result = await client.fetch("vid-1")
    assert result.kind == AnswerKind.AUTH_FAILED
    assert_no_secret(result)


async def test_fetch_never_raises_for_unexpected_bodies() -> None:
    answers = iter(
        [
            httpx.Response(200, content=b"\xff\xfe\x00garbage"),
            httpx.Response(200, json=None),
            httpx.Response(200, json={"code": 1000, "data": None}),
        ]
    )
    client, http = client_for(key_settings(), FakeAkool(info=lambda _r: next(answers)))
    async with http:
        for _ in range(3):
            assert (await client.fetch("vid-1")).kind == AnswerKind.TRANSIENT
