"""Secrets stay secret (issue 3 item 7): nothing a running relay says contains one.

A relay is run through a full flow with distinctive secrets — the Akool key (or the getToken client
secret), the webhook secret, the API tokens — while every log record at DEBUG level, every response
body and header and every callback it sent is kept; none may contain a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.logs import TEXT_FORMAT, JsonFormatter
from app.main import create_app
from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import Simulator, SimulatorConfig
from tests.support.env import relay_settings
from tests.support.secrets import (
    ADMIN_TOKEN,
    API_KEY,
    CLIENT_ID,
    CLIENT_SECRET,
    SECRETS,
    TOKENS,
    WEBHOOK_SECRET,
)

# Lets the flow reach every state quickly.
FLOW_ENV: dict[str, Any] = {
    "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "RELAY_API_TOKENS": ",".join(TOKENS),
    "RELAY_ADMIN_TOKENS": ADMIN_TOKEN,
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

    def add_logs(self, caplog: pytest.LogCaptureFixture) -> None:
        """The captured log: its text, and each record with its arguments and extra fields, and as
        each RELAY_LOG_FORMAT writes it (text and JSON)."""
        self.add("caplog.text", caplog.text)
        formats = {"text": logging.Formatter(TEXT_FORMAT), "json": JsonFormatter()}
        for record in caplog.records:
            for name, formatter in formats.items():
                self.add(f"log line ({name}) {record.name}", formatter.format(record))
            extra = {k: v for k, v in vars(record).items() if k not in ("msg", "args", "exc_info")}
            self.add(f"log record {record.name}", f"{record.getMessage()} {record.args!r} {extra!r}")

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


# -- the flows ---------------------------------------------------------------------------------


@dataclass
class Flow:
    sim: Simulator
    client: httpx.AsyncClient  # authorized
    base_url: str
    hook_url: str
    transcript: Transcript
    issued: list[str] = field(default_factory=list)  # tokens the relay made (kept hashed only)
    stored: list[str] = field(default_factory=list)  # webhook secrets it made (kept, to sign with)


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


async def _register(flow: Flow, vid: str, queue_seconds: float, process_seconds: float | None = None) -> None:
    """Script `vid` at the simulator, then register it with the receiver as its callback."""
    flow.sim.script(vid, queue_seconds=queue_seconds, process_seconds=process_seconds)
    await flow.client.post("/jobs", json={"video_model_id": vid, "callback_url": flow.hook_url})


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
        await _register(flow, "sec-after-revoke", queue_seconds=0, process_seconds=0)
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
    await _register(flow, "sec-paused", queue_seconds=0, process_seconds=0)
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
        await _register(flow, "sec-token-refused", queue_seconds=0, process_seconds=0)
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
    await _register(flow, "sec-cancel", queue_seconds=1e9)
    assert (await c.delete("/jobs/sec-cancel")).status_code == 204
    assert (await c.delete("/jobs/sec-paused")).status_code == 204
    assert (await c.post("/jobs", content=b"x" * (3 * 1024 * 1024))).status_code == 413
    await _tenant_flow(flow)


async def _tenant_flow(flow: Flow) -> None:
    """A tenant made, used, rotated and revoked: its token and secrets must not leak either."""
    # Not in the transcript: these answers carry the new credentials by design (shown once).
    async with httpx.AsyncClient(
        base_url=flow.base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    ) as admin:
        made = (await admin.post("/tenants", json={"name": "sec-tenant"})).json()
        more = (await admin.post(f"/tenants/{made['id']}/tokens")).json()
        rotated = await admin.post(f"/tenants/{made['id']}/webhook-secret/rotate", json={"grace_seconds": 60})
    flow.issued += [made["token"], more["token"]]
    flow.stored += [made["webhook_secret"], rotated.json()["webhook_secret"]]
    as_tenant = {"authorization": f"Bearer {made['token']}"}
    c = flow.client
    flow.sim.script("sec-tenant-1", queue_seconds=0, process_seconds=0)
    job = {"video_model_id": "sec-tenant-1", "callback_url": flow.hook_url}
    assert (await c.post("/jobs", json=job, headers=as_tenant)).status_code == 201
    # Signed with the tenant's secrets, which the receiver does not know: refused, tried again.
    await _until(
        lambda: _attempted(c, "sec-tenant-1", as_tenant), 10, "the tenant's callback to be attempted"
    )
    assert (await c.get("/tenant", headers=as_tenant)).status_code == 200
    assert (await c.get("/jobs", headers=as_tenant)).status_code == 200
    as_admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await c.get("/tenants", headers=as_admin)).status_code == 200
    assert (await c.get(f"/tenants/{made['id']}/tokens", headers=as_admin)).status_code == 200
    gone = await c.delete(f"/tenants/{made['id']}/tokens/{more['id']}", headers=as_admin)
    assert gone.status_code == 204
    revoked = {"authorization": f"Bearer {more['token']}"}
    assert (await c.get("/jobs", headers=revoked)).status_code == 401


async def _attempted(c: httpx.AsyncClient, vid: str, headers: dict[str, str]) -> bool:
    job = (await c.get(f"/jobs/{vid}", headers=headers)).json()
    return any(d["attempts"] for d in job.get("deliveries", []))


@contextlib.asynccontextmanager
async def _running(db_url: str, sim: Simulator, **env: Any) -> AsyncIterator[Flow]:
    """The relay (with `env`), `sim` and a receiver, with every logger at DEBUG throughout; everything
    else the relay says goes into the flow's transcript."""
    transcript = Transcript()
    with every_logger_at_debug() as fix_logging:
        receiver = Receiver(secret=WEBHOOK_SECRET, behaviour=Behaviour(fail_first=1, body=b"nope, try again"))
        async with serve_in_background(sim.app) as sim_url, serve_in_background(receiver.app) as rec_url:
            settings = relay_settings(db_url, sim_url, **{**FLOW_ENV, **env})
            for text in (
                repr(settings),
                str(settings),
                settings.model_dump_json(),
                repr(settings.model_dump()),
            ):
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
                    transcript.add("relay repr", repr(app.state.runtime.__dict__))
            finally:
                for r in receiver.attempts:
                    transcript.add(f"callback {r.webhook_id}", f"{r.headers} {r.body}")


async def test_no_secret_in_logs_answers_or_callbacks_api_key(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = Simulator(SimulatorConfig(queue_seconds=0.2, process_seconds=0.4, api_key=API_KEY))
    async with _running(db_url, sim, AKOOL_API_KEY=API_KEY) as flow:
        await _full_flow(flow, token_auth=False)
    assert sim.stats()["by_code"].get("1000", 0) > 5  # the key really was used
    _assert_nothing_leaked(flow.transcript, caplog, extra=flow.issued)
    _assert_stored_secrets_reach_only_driver_debug(flow, caplog)


async def test_no_secret_in_logs_answers_or_callbacks_token_auth(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
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
    async with _running(db_url, sim, **env) as flow:
        await _full_flow(flow, token_auth=True)
    issued.update(sim._tokens)
    assert sim.token_requests >= 3 and len(issued) >= 2  # token auth really was used, and renewed
    _assert_nothing_leaked(flow.transcript, caplog, extra=[*sorted(issued), *flow.issued])
    _assert_stored_secrets_reach_only_driver_debug(flow, caplog)


def _assert_nothing_leaked(
    transcript: Transcript, caplog: pytest.LogCaptureFixture, extra: list[str] | None = None
) -> None:
    transcript.add_logs(caplog)
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


# Loggers of the database drivers: at DEBUG (which no relay setting turns on; this test forces it)
# they print statement parameters and result rows, so a secret the relay keeps in the database to
# sign with shows there, as any stored value would.
DRIVER_LOGGERS = ("aiosqlite", "sqlalchemy.engine")


def _assert_stored_secrets_reach_only_driver_debug(flow: Flow, caplog: pytest.LogCaptureFixture) -> None:
    texts = [(w, t) for w, t in flow.transcript.texts if not w.startswith(("log ", "caplog.text"))]
    for record in caplog.records:
        if record.levelno <= logging.DEBUG and record.name.startswith(DRIVER_LOGGERS):
            continue
        texts.append((f"log record {record.name}", f"{record.getMessage()} {record.args!r} {vars(record)!r}"))
    leaks = [
        f"a tenant's webhook secret in {where}"
        for where, text in texts
        for secret in flow.stored
        if secret in text
    ]
    assert flow.stored and not leaks, leaks[:20]


def test_the_scan_finds_a_planted_secret(caplog: pytest.LogCaptureFixture) -> None:
    """The net has no hole: a secret in a non-propagating logger's record, or in an answer, is found."""
    caplog.set_level(logging.DEBUG)
    hidden = logging.getLogger("uvicorn.error")
    with every_logger_at_debug():
        hidden.debug("x-api-key: %s", API_KEY)
    transcript = Transcript()
    transcript.add("answer", f'{{"detail": "bad token {TOKENS[1]}"}}')
    transcript.add_logs(caplog)
    leaks = transcript.leaks()
    assert any(API_KEY in leak for leak in leaks), leaks
    assert any(TOKENS[1] in leak for leak in leaks), leaks
