"""Secrets stay secret (issue 3 item 7).

A relay is run through a full flow with distinctive secrets — the Akool key (or the getToken client
secret), the webhook secret, the API tokens — while every log record at DEBUG level, every response
body and header, every callback it sent and every configuration error is kept; none may contain a
secret. Token comparison is checked to be constant-time in construction and correct in behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.requests import Request

import app.api.deps as deps
from app import cli
from app.config import ConfigError, Settings, load_settings
from app.errors import Unauthorized
from app.main import create_app
from app.receiver import Behaviour, Receiver
from app.serving import serve_in_background
from app.simulator import Simulator, SimulatorConfig
from tests.conftest import relay_settings

API_KEY = "akool-key-SENTINEL-1"
TOKENS = ("tok-SENTINEL-2", "tok-SENTINEL-3")
CLIENT_ID = "client-id-public"  # an identifier, not a secret
CLIENT_SECRET = "cs-SENTINEL-4"
WEBHOOK_KEY = b"SENTINEL-5 webhook signing key!!"  # 32 bytes of key material
WEBHOOK_B64 = base64.b64encode(WEBHOOK_KEY).decode()
WEBHOOK_SECRET = "whsec_" + WEBHOOK_B64

SECRETS = [
    API_KEY,
    *TOKENS,
    CLIENT_SECRET,
    WEBHOOK_SECRET,
    WEBHOOK_B64,
    WEBHOOK_B64.rstrip("="),
    WEBHOOK_KEY.decode(),
    base64.urlsafe_b64encode(WEBHOOK_KEY).decode(),
    "SENTINEL",  # every secret above carries it; nothing else in these runs does
]

# Lets the flow reach every state quickly.
FLOW_ENV: dict[str, Any] = {
    "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "RELAY_API_TOKENS": ",".join(TOKENS),
    "RELAY_NOT_FOUND_GRACE": 0.3,
    "RELAY_RETRY_SCHEDULE": "0.1,0.1,0.1",
    "RELAY_DELIVERY_TIMEOUT": 1,
}


# -- what is captured --------------------------------------------------------------------------


@dataclass
class Transcript:
    """Everything the relay said, to anyone: API answers, callbacks, errors."""

    texts: list[tuple[str, str]] = field(default_factory=list)  # (where, text)

    def add(self, where: str, text: object) -> None:
        self.texts.append((where, str(text)))

    async def on_response(self, response: httpx.Response) -> None:
        await response.aread()
        request = response.request
        self.add(
            f"response to {request.method} {request.url.path}",
            f"{response.status_code} {dict(response.headers)} {response.text}",
        )

    def leaks(self) -> list[str]:
        found = []
        for where, text in self.texts:
            for secret in SECRETS:
                at = text.find(secret)
                if at >= 0:
                    found.append(f"{secret!r} in {where}: …{text[max(0, at - 120) : at + 80]!r}…")
        return found


@contextlib.contextmanager
def every_logger_at_debug() -> Iterator[Callable[[], None]]:
    """Root and every existing logger at DEBUG, all of them propagating to the root (and caplog).

    Loggers that keep their own handlers (uvicorn's) hand their records to the root instead for the
    duration. Yields a function to apply it again (uvicorn and the relay set levels when they start).
    """
    saved: dict[logging.Logger, tuple[int, bool, bool, list[logging.Handler]]] = {}

    def apply() -> None:
        loggers = [logging.getLogger()] + [
            lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
        ]
        for logger in loggers:
            saved.setdefault(logger, (logger.level, logger.propagate, logger.disabled, list(logger.handlers)))
            logger.setLevel(logging.DEBUG)
            logger.disabled = False
            if logger is not logging.root and not logger.propagate:
                logger.propagate = True
                for handler in list(logger.handlers):
                    logger.removeHandler(handler)

    apply()
    try:
        yield apply
    finally:
        for logger, (level, propagate, disabled, handlers) in saved.items():
            logger.setLevel(level)
            logger.propagate = propagate
            logger.disabled = disabled
            if logger is not logging.root:
                for handler in list(logger.handlers):
                    logger.removeHandler(handler)
                for handler in handlers:
                    logger.addHandler(handler)


def log_texts(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    texts = [("caplog.text", caplog.text)]
    for record in caplog.records:
        extra = {k: v for k, v in vars(record).items() if k not in ("msg", "args", "exc_info")}
        texts.append((f"log record {record.name}", f"{record.getMessage()} {record.args!r} {extra!r}"))
    return texts


# -- the flows ---------------------------------------------------------------------------------


@dataclass
class Flow:
    sim: Simulator
    client: httpx.AsyncClient  # authorized
    base_url: str
    hook_url: str
    transcript: Transcript


async def _until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _job(flow: Flow, vid: str) -> dict[str, Any]:
    response = await flow.client.get(f"/jobs/{vid}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def _settled(flow: Flow, vids: list[str]) -> None:
    async def done() -> bool:
        for vid in vids:
            job = await _job(flow, vid)
            if not job["finished_at"] or job["delivery"] not in ("delivered", "dead"):
                return False
        return True

    await _until(done, 20, f"{vids} to finish and settle their deliveries")


async def _ready(flow: Flow, status: int) -> None:
    async def check() -> bool:
        return (await flow.client.get("/readyz")).status_code == status

    await _until(check, 10, f"/readyz {status}")


async def _full_flow(flow: Flow, token_auth: bool) -> None:
    c = flow.client
    all_events = ["queueing", "processing", "progress", "completed", "failed", "expired"]
    jobs = {
        "sec-ok": flow.hook_url,
        "fail-sec": flow.hook_url,
        "missing-sec": flow.hook_url,  # Akool keeps saying it does not exist: failed after the grace
        "sec-dead": "http://127.0.0.1:9/closed",  # nobody listens: connection errors, then dead
    }
    for vid, url in jobs.items():
        created = await c.post(
            "/jobs",
            json={"video_model_id": vid, "callback_url": url, "events": all_events, "metadata": {"k": vid}},
        )
        assert created.status_code == 201, created.text
    batch = await c.post(
        "/jobs/batch",
        json={"jobs": [{"video_model_id": "sec-batch", "callback_url": flow.hook_url}, {"nope": 1}]},
    )
    assert [item["status"] for item in batch.json()["results"]] == [201, 422]
    assert (
        await c.post("/jobs", json={"video_model_id": "sec-ok", "callback_url": "http://x.test/"})
    ).status_code == 409
    assert (await c.post("/jobs", json={"video_model_id": "bad id!", "callback_url": "x"})).status_code == 422
    assert (
        await c.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
    ).status_code == 422
    await _settled(flow, [*jobs, "sec-batch"])
    assert (await _job(flow, "sec-dead"))["delivery"] == "dead"
    assert (await _job(flow, "sec-ok"))["deliveries"][0]["attempts"][0]["status_code"] == 500

    if token_auth:  # the token is revoked: the relay fetches a new one and carries on
        flow.sim.revoke_tokens()
        flow.sim.script("sec-after-revoke", queue_seconds=0, process_seconds=0)
        await c.post("/jobs", json={"video_model_id": "sec-after-revoke", "callback_url": flow.hook_url})
        await _settled(flow, ["sec-after-revoke"])

    # Wrong credentials on the relay's own API.
    async with httpx.AsyncClient(
        base_url=flow.base_url, event_hooks={"response": [flow.transcript.on_response]}
    ) as anon:
        wrong = [
            {},
            {"authorization": "Bearer"},
            {"authorization": "Bearer tok-XXXXXXXX-2"},  # same length as a real token
            {"authorization": f"Bearer {TOKENS[0]}x"},
            {"authorization": f"Basic {TOKENS[0]}"},  # the right token under the wrong scheme
            {"authorization": f"Token {TOKENS[1]}"},
            {"x-api-key": TOKENS[0]},
        ]
        for headers in wrong:
            for method, path in (("GET", "/jobs"), ("GET", "/jobs/sec-ok"), ("POST", "/jobs")):
                response = await anon.request(method, path, headers=headers, json={"video_model_id": "z"})
                assert response.status_code == 401, (headers, response.text)
        for path in ("/healthz", "/readyz", "/metrics"):  # open routes
            assert (await anon.get(path)).status_code in (200, 503)

    # Akool refuses our credentials (1101): polling pauses, readyz says why, then it recovers.
    flow.sim.auth_failing = True
    flow.sim.script("sec-paused", queue_seconds=0, process_seconds=0)
    await c.post("/jobs", json={"video_model_id": "sec-paused", "callback_url": flow.hook_url})
    await _ready(flow, 503)

    async def dashboard_says_auth_failed() -> bool:
        return bool((await c.get("/jobs")).json()["summary"]["upstream"]["state"] == "auth_failed")

    await _until(dashboard_says_auth_failed, 5, "the dashboard to show auth_failed")
    flow.sim.auth_failing = False
    await _ready(flow, 200)
    if token_auth:  # getToken itself refuses (wrong client secret at Akool's end), then accepts again
        real = flow.sim.config.client_secret
        flow.sim.config.client_secret = "rotated-at-akool"
        flow.sim.revoke_tokens()
        flow.sim.script("sec-token-refused", queue_seconds=0, process_seconds=0)
        await c.post("/jobs", json={"video_model_id": "sec-token-refused", "callback_url": flow.hook_url})
        await _ready(flow, 503)
        flow.sim.config.client_secret = real
        await _ready(flow, 200)
        await _settled(flow, ["sec-token-refused"])
    await _settled(flow, ["sec-paused"])

    # Every read the API offers.
    for params in ({}, {"status": ["completed", "failed"]}, {"limit": 1}):
        assert (await c.get("/jobs", params=params)).status_code == 200
    page = (await c.get("/jobs", params={"limit": 2})).json()
    assert (await c.get("/jobs", params={"cursor": page["next_cursor"]})).status_code == 200
    for vid in [*jobs, "sec-batch", "sec-paused"]:
        await _job(flow, vid)
    for path in ("/metrics", "/openapi.json", "/healthz", "/readyz", "/docs", "/jobs/nope"):
        await c.get(path)
    assert (await c.patch("/jobs/sec-batch", json={"metadata": {"v": 2}})).status_code == 200
    assert (await c.patch("/jobs/sec-batch", json={"callback_url": "gopher://x"})).status_code == 422
    assert (await c.post("/jobs/sec-ok/redeliver")).status_code == 202
    flow.sim.script("sec-cancel", queue_seconds=1e9)
    await c.post("/jobs", json={"video_model_id": "sec-cancel", "callback_url": flow.hook_url})
    assert (await c.delete("/jobs/sec-cancel")).status_code == 204
    assert (await c.delete("/jobs/sec-paused")).status_code == 204
    assert (await c.post("/jobs", content=b"x" * (3 * 1024 * 1024))).status_code == 413


@contextlib.asynccontextmanager
async def _running(
    db_url: str, sim: Simulator, transcript: Transcript, fix_logging: Callable[[], None], **env: Any
) -> AsyncIterator[Flow]:
    receiver = Receiver(secret=WEBHOOK_SECRET, behaviour=Behaviour(fail_first=1, body=b"nope, try again"))
    async with serve_in_background(sim.app) as sim_url, serve_in_background(receiver.app) as rec_url:
        settings = relay_settings(db_url, sim_url, **{**FLOW_ENV, **env})
        for text in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.model_dump())):
            transcript.add("settings", text)
        app = create_app(settings)
        try:
            async with serve_in_background(app) as base_url:
                fix_logging()
                async with httpx.AsyncClient(
                    base_url=base_url,
                    headers={"authorization": f"Bearer {TOKENS[1]}"},
                    event_hooks={"response": [transcript.on_response]},
                    timeout=10,
                ) as client:
                    yield Flow(sim, client, base_url, receiver.url(rec_url), transcript)
                transcript.add("relay repr", repr(app.state.relay.__dict__))
        finally:
            for r in receiver.attempts:
                transcript.add(f"callback {r.webhook_id}", f"{r.headers} {r.body}")


async def test_no_secret_in_logs_answers_or_callbacks_api_key(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    transcript = Transcript()
    sim = Simulator(SimulatorConfig(queue_seconds=0.2, process_seconds=0.4, api_key=API_KEY))
    with every_logger_at_debug() as fix_logging:
        async with _running(db_url, sim, transcript, fix_logging, AKOOL_API_KEY=API_KEY) as flow:
            await _full_flow(flow, token_auth=False)
    assert sim.stats()["by_code"].get("1000", 0) > 5  # the key really was used
    _assert_nothing_leaked(transcript, caplog)


async def test_no_secret_in_logs_answers_or_callbacks_token_auth(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    transcript = Transcript()
    sim = Simulator(
        SimulatorConfig(
            queue_seconds=0.2, process_seconds=0.4, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        )
    )
    issued: set[str] = set()
    revoke = sim.revoke_tokens

    def revoke_and_remember() -> None:  # the Akool tokens it was given are credentials too
        issued.update(sim._tokens)
        revoke()

    sim.revoke_tokens = revoke_and_remember  # type: ignore[method-assign]
    env = {"AKOOL_API_KEY": None, "AKOOL_CLIENT_ID": CLIENT_ID, "AKOOL_CLIENT_SECRET": CLIENT_SECRET}
    with every_logger_at_debug() as fix_logging:
        async with _running(db_url, sim, transcript, fix_logging, **env) as flow:
            await _full_flow(flow, token_auth=True)
    issued.update(sim._tokens)
    assert sim.token_requests >= 3 and len(issued) >= 2  # token auth really was used, and renewed
    _assert_nothing_leaked(transcript, caplog, extra=sorted(issued))


def _assert_nothing_leaked(
    transcript: Transcript, caplog: pytest.LogCaptureFixture, extra: list[str] | None = None
) -> None:
    for where, text in log_texts(caplog):
        transcript.add(where, text)
    leaks = transcript.leaks()
    for token in extra or []:
        leaks += [
            f"an Akool token issued to the relay in {where}"
            for where, text in transcript.texts
            if token in text
        ]
    size = sum(len(text) for _, text in transcript.texts)
    print(
        f"\nscanned {len(caplog.records)} log records and {len(transcript.texts)} texts "
        f"({size / 1024:.0f} KiB) for {len(SECRETS) + len(extra or [])} secret strings: {len(leaks)} found"
    )
    names = {record.name for record in caplog.records}
    # The relay's own warnings, the HTTP clients, the database, the scheduler, the server: all heard.
    for expected in (
        "app.worker.poller",
        "httpx",
        "httpcore.http11",
        "apscheduler.scheduler",
        "uvicorn.access",
    ):
        assert expected in names, (expected, sorted(names))
    assert any(name.startswith("sqlalchemy.engine") for name in names), sorted(names)
    assert not leaks, "\n".join(leaks[:20])


def test_the_scan_finds_a_planted_secret(caplog: pytest.LogCaptureFixture) -> None:
    """The net has no hole: a secret in a non-propagating logger's record, or in an answer, is found."""
    caplog.set_level(logging.DEBUG)
    hidden = logging.getLogger("uvicorn.error")
    with every_logger_at_debug():
        hidden.debug("x-api-key: %s", API_KEY)
    transcript = Transcript()
    transcript.add("answer", f'{{"detail": "bad token {TOKENS[1]}"}}')
    for where, text in log_texts(caplog):
        transcript.add(where, text)
    leaks = transcript.leaks()
    assert any(API_KEY in leak for leak in leaks), leaks
    assert any(TOKENS[1] in leak for leak in leaks), leaks


# -- configuration errors and the settings repr ------------------------------------------------


SECRET_ENV = {
    "AKOOL_API_KEY": API_KEY,
    "AKOOL_CLIENT_ID": CLIENT_ID,
    "AKOOL_CLIENT_SECRET": CLIENT_SECRET,
    "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "RELAY_API_TOKENS": ",".join(TOKENS),
    "DATABASE_URL": "sqlite:///./never-created.db",
}

BAD_NEIGHBOURS: list[tuple[dict[str, str], str]] = [
    ({"RELAY_POLL_CONCURRENCY": "lots"}, "RELAY_POLL_CONCURRENCY"),
    ({"RELAY_RETRY_SCHEDULE": "5,soon"}, "RELAY_RETRY_SCHEDULE"),
    ({"AKOOL_BASE_URL": "ftp://akool"}, "AKOOL_BASE_URL"),
    ({"RELAY_POLL_INTERVAL_MIN": "10", "RELAY_POLL_INTERVAL_MAX": "1"}, "RELAY_POLL_INTERVAL_MAX"),
    ({"RELAY_WEBHOOK_SECRET": "SENTINEL-6-not-a-whsec-value"}, "RELAY_WEBHOOK_SECRET"),
    ({"AKOOL_CLIENT_ID": ""}, "AKOOL_CLIENT_ID"),  # the secret without its id
]


def _exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc)), str(exc.args)]


def _leaked_in(texts: list[str]) -> list[str]:
    return [secret for secret in SECRETS for text in texts if secret in text]


@pytest.mark.parametrize(("bad", "variable"), BAD_NEIGHBOURS, ids=[v for _, v in BAD_NEIGHBOURS])
def test_config_errors_name_the_variable_but_not_the_secrets(
    bad: dict[str, str], variable: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = {**SECRET_ENV, **bad}
    # given as arguments
    with pytest.raises(ConfigError) as by_args:
        load_settings(**{k: v for k, v in env.items() if v != ""})
    # and from the environment
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as by_env:
        load_settings()
    for caught in (by_args.value, by_env.value):
        assert variable in str(caught)
        assert not _leaked_in(_exception_texts(caught)), _exception_texts(caught)[2]


def test_the_cli_reports_a_config_error_without_the_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in {**SECRET_ENV, "RELAY_DELIVERY_TIMEOUT": "-1"}.items():
        monkeypatch.setenv(name, value)
    levels = {
        name: logging.getLogger(name).level for name in ("httpx", "apscheduler", "alembic.runtime.plugins")
    }
    try:
        assert cli.main(["webhook-secret"]) == 2
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    out = capsys.readouterr()
    assert "RELAY_DELIVERY_TIMEOUT" in out.err
    assert not _leaked_in([out.out, out.err]), out


def test_settings_repr_and_str_hide_every_secret() -> None:
    settings = load_settings(**SECRET_ENV)
    texts = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.model_dump()),
        str(settings.model_dump()),
        repr(settings.api_tokens),
        f"{settings}",
        f"{settings.webhook_secret}",
        f"{settings.akool_api_key!r}",
    ]
    assert not _leaked_in(texts), texts
    # ...while the values themselves are intact for the code that needs them
    assert settings.akool_api_key is not None and settings.akool_api_key.get_secret_value() == API_KEY
    assert settings.api_token_values == list(TOKENS)


# -- token comparison --------------------------------------------------------------------------


def _request(authorization: str | bytes | None) -> Request:
    headers = (
        []
        if authorization is None
        else [
            (
                b"authorization",
                authorization if isinstance(authorization, bytes) else authorization.encode("latin-1"),
            )
        ]
    )
    return Request({"type": "http", "method": "GET", "path": "/jobs", "headers": headers})


def _relay(tokens: list[str]) -> Any:
    return SimpleNamespace(settings=SimpleNamespace(api_token_values=tokens))


def _accepted(authorization: str | bytes | None, tokens: list[str]) -> bool:
    try:
        deps.require_token(_request(authorization), _relay(tokens))
    except Unauthorized:
        return False
    return True


def test_token_comparison_uses_compare_digest_against_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant-time in construction: hmac.compare_digest for each configured token, no early exit."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    tokens = ["tok-SENTINEL-2", "tok-SENTINEL-3", "tok-other-long-token-value"]
    for presented, ok in [
        (f"Bearer {tokens[0]}", True),  # a match on the first token still compares with the rest
        (f"Bearer {tokens[2]}", True),
        ("Bearer tok-SENTINEL-X", False),
        ("Bearer nope", False),
    ]:
        calls.clear()
        assert _accepted(presented, tokens) is ok, presented
        assert len(calls) == len(tokens), (presented, calls)
        assert sorted(b for _, b in calls) == sorted(t.encode() for t in tokens)
        assert all(a == presented.split(" ", 1)[1].encode() for a, _ in calls)


def test_token_comparison_behaviour() -> None:
    tokens = list(TOKENS)
    assert _accepted(f"Bearer {TOKENS[0]}", tokens)
    assert _accepted(f"Bearer {TOKENS[1]}", tokens)  # any one of several
    assert _accepted(f"bearer {TOKENS[1]}", tokens)  # the scheme is case-insensitive
    assert _accepted(None, [])  # no tokens configured: the API is open
    refused: list[str | bytes | None] = [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer tok-SENTINEL-9",  # same length, same prefix, last character differs
        "Bearer Tok-SENTINEL-2",  # first character differs
        "Bearer tok-SENTINEL-",  # a prefix
        f"Bearer {TOKENS[0]}2",  # an extension
        f"Bearer {TOKENS[0]},{TOKENS[1]}",  # the configured list
        f"Bearer {TOKENS[0]} {TOKENS[1]}",
        f"Basic {TOKENS[0]}",
        TOKENS[0],
        b"Bearer tok-SENTINEL-\xb2",  # not ASCII: refused, not an error
        "Bearer tok-SENTINEL-2\x00",
    ]
    for presented in refused:
        assert not _accepted(presented, tokens), presented


async def test_token_auth_over_http(db_url: str) -> None:
    sim = Simulator(SimulatorConfig(api_key="k"))
    async with serve_in_background(sim.app) as sim_url:
        settings = relay_settings(db_url, sim_url, AKOOL_API_KEY="k", RELAY_API_TOKENS=",".join(TOKENS))
        async with (
            serve_in_background(create_app(settings)) as base_url,
            httpx.AsyncClient(base_url=base_url) as c,
        ):
            for token in TOKENS:
                response = await c.get("/jobs", headers={"authorization": f"Bearer {token}"})
                assert response.status_code == 200, response.text
            for presented in ("Bearer tok-SENTINEL-9", "Bearer tok-SENTINEL-", f"Basic {TOKENS[0]}", ""):
                response = await c.get("/jobs", headers={"authorization": presented})
                assert response.status_code == 401, presented
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json() == {"detail": "missing or invalid bearer token"}
            raw: list[tuple[bytes, bytes]] = [(b"authorization", b"Bearer \xff\xfe")]
            response = await c.get("/jobs", headers=raw)
            assert response.status_code == 401


def test_settings_type_keeps_secrets_as_secretstr() -> None:
    secret_fields = {"akool_api_key", "akool_client_secret", "webhook_secret", "api_tokens"}
    for name in secret_fields:
        annotation = str(Settings.model_fields[name].annotation)
        assert "SecretStr" in annotation, (name, annotation)
