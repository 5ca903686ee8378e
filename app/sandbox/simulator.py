"""A stand-in for Akool's open API, used by the tests, the demo and the benchmarks.

It answers `infobymodelid`, `getToken` and `createbytranslate` like Akool does (SPEC §1), plays each
id through a timed lifecycle (queueing → processing → completed / failed) starting the first time the
id is asked about (or when it was created), pushes Akool's webhook on status 2, 3 and 4 to the ids
that asked for it (app.sandbox.pusher), injects faults on demand, and records what the relay did to
it: every request and every create, overlapping requests for one id (the relay must never make any),
and when each id's outcome was first shown.

Outcome by id prefix: `fail…` fails, `unknown…` / `missing…` never exist (code 1008), anything else
completes; `script()` overrides one id. Everything the Python API drives can also be driven over HTTP
under `/_sim/` so a simulator running in another process can be steered and read.

Timeline: by default the short linear one (queue 1 s, then progress rising linearly over 3 s:
SimulatorConfig), which the demo, the tests and the container check rely on. With a `workload`
(app.sandbox.workload, written down there) each id plays a lifelike timeline derived from (seed, id):
queueing 10–30 %, uneven noisy progress that stalls sometimes, jumps, or no progress at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import Headers

from app.sandbox.pusher import RETRY_DELAYS, Pusher, push_credentials, push_routes
from app.sandbox.workload import Timeline, Workload

INFO_PATH = "/api/open/v3/content/video/infobymodelid"
TOKEN_PATH = "/api/open/v3/getToken"
CREATE_PATH = "/api/open/v3/content/video/createbytranslate"
MEDIA_BASE = "https://sim.akool.local"
CLIENT_CLOSED = 499  # http_status recorded when the client hung up before the answer

Outcome = Literal["completed", "failed", "unknown"]

MESSAGES = {
    1000: "OK",
    1003: "Parameter error or Parameter can not be empty",
    1005: "Operation is too frequent",
    1008: "The content you get does not exist.",
    1101: "Invalid authorization or the request token has expired",
    1102: "Authorization cannot be empty",
}
FAILED_ERROR_CODE = 100203
FAILED_REASON = "Video translation failed: no speech was detected in the source video"
LANGUAGE_FAILED = (1015, "Create video error, please try again later")


@dataclass
class SimulatorConfig:
    queue_seconds: float = 1.0  # time an id spends in video_status 1 after first seen
    process_seconds: float = 3.0  # time in status 2, progress rising linearly 0..100
    api_key: str | None = None  # when set, x-api-key must equal it (else code 1101)
    client_id: str | None = None  # getToken credentials; when set, issued Bearer tokens are accepted
    client_secret: str | None = None  # pushes are encrypted with it, else with api_key (16/24/32 bytes)
    latency: float = 0.0  # seconds added to every answer
    push_retry_delays: tuple[float, ...] = RETRY_DELAYS  # before each retry of a push not answered 200
    workload: Workload | None = None  # lifelike jobs; None: queue_seconds, then process_seconds linear


@dataclass(slots=True)
class RequestRecord:
    video_model_id: str
    started: float  # time.monotonic()
    ended: float
    code: int | None  # business code, None when the answer was not the envelope
    http_status: int


@dataclass(slots=True)
class CreateRecord:
    at: float  # time.time() when the request came
    body: Any  # the JSON body as sent (None when it was not JSON)
    code: int  # business code answered
    ids: list[str]  # the ids it made, one per language that did not fail


@dataclass(slots=True)
class Faults:
    http_500: float = 0.0
    slow: float = 0.0
    bad_body: float = 0.0
    throttle: float = 0.0


@dataclass(slots=True)
class _Script:
    outcome: Outcome
    queue_seconds: float | None
    process_seconds: float | None


class FaultsBody(BaseModel):
    http_500: float = Field(0.0, ge=0, le=1)
    slow: float = Field(0.0, ge=0, le=1)
    bad_body: float = Field(0.0, ge=0, le=1)
    throttle: float = Field(0.0, ge=0, le=1)
    auth_failing: bool | None = None  # None leaves the current value
    slow_seconds: float | None = Field(None, ge=0)
    latency: float | None = Field(None, ge=0)


class CreateFaults(BaseModel):
    error_code: int | None = None  # every create answers this business code, making nothing
    error_msg: str | None = None
    fail_languages: list[str] = Field(default_factory=list)  # their all_results entries fail (no id)
    fail_code: int = LANGUAGE_FAILED[0]
    fail_msg: str = LANGUAGE_FAILED[1]
    delay: float = Field(default=0.0, ge=0)  # seconds between making the jobs and answering


class ScriptBody(BaseModel):
    video_model_id: str
    outcome: Outcome = "completed"
    queue_seconds: float | None = Field(None, ge=0)
    process_seconds: float | None = Field(None, ge=0)


class ManualClock:
    """A job clock that moves only when told: `advance(seconds)`. Tests that step the relay use it so
    that a job's lifecycle takes no wall time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Simulator:
    def __init__(
        self, config: SimulatorConfig | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        """`clock` times each id's lifecycle (default: time.monotonic; see ManualClock)."""
        self.config = config or SimulatorConfig()
        self.clock = clock or time.monotonic
        self.faults = Faults()
        self.slow_seconds = 30.0
        self.auth_failing = False
        self.rng = random.Random(0)
        self.requests: list[RequestRecord] = []
        self.overlaps: dict[str, int] = {}
        self.terminal_sent_at: dict[str, float] = {}
        self.token_requests = 0
        self._tokens: set[str] = set()
        self._scripts: dict[str, _Script] = {}
        self._first_seen: dict[str, tuple[float, int]] = {}  # id -> (monotonic, epoch ms)
        self._in_flight: dict[str, int] = {}
        self.creates: list[CreateRecord] = []
        self.create_faults = CreateFaults()
        self._created: dict[str, str] = {}  # id made by createbytranslate -> its language
        self._timelines: dict[str, Timeline] = {}  # the workload's, computed once per id
        self.pusher = Pusher(
            self._push_status,
            lambda: push_credentials(self.config.client_id, self.config.client_secret, self.config.api_key),
            _result_url,
            retry_delays=self.config.push_retry_delays,
        )
        self.app = self._build_app()

    # -- driving ---------------------------------------------------------------------------------

    def set_faults(
        self, *, http_500: float = 0, slow: float = 0, bad_body: float = 0, throttle: float = 0
    ) -> None:
        faults = Faults(float(http_500), float(slow), float(bad_body), float(throttle))
        if not all(0 <= p <= 1 for p in asdict(faults).values()):
            raise ValueError("fault probabilities must be between 0 and 1")
        self.faults = faults

    def revoke_tokens(self) -> None:
        self._tokens.clear()

    def script(
        self,
        video_model_id: str,
        *,
        outcome: str = "completed",
        queue_seconds: float | None = None,
        process_seconds: float | None = None,
    ) -> None:
        if outcome not in ("completed", "failed", "unknown"):
            raise ValueError(f"outcome must be completed, failed or unknown, not {outcome!r}")
        self._scripts[video_model_id] = _Script(cast(Outcome, outcome), queue_seconds, process_seconds)

    def set_create_faults(self, **faults: Any) -> None:
        """From now on (CreateFaults' fields; none: no fault): answer every create `error_code`, making
        nothing; fail the all_results entries of `fail_languages`; answer `delay` s after making the jobs."""
        self.create_faults = CreateFaults(**faults)

    def push_to(self, video_model_id: str, url: str) -> None:
        """Push the id's status changes (2, 3, 4) to `url`, as Akool does for a job created with
        `webhookUrl`. ValueError when the config has no push credentials (see `push_credentials`)."""
        self.pusher.push_to(video_model_id, url)

    def set_push_faults(self, **faults: Any) -> None:
        """drop (probability), delay (s), repeat, reorder, lie: see app.sandbox.pusher; none: no fault."""
        self.pusher.set_faults(**faults)

    async def flush_pushes(self) -> int:
        """Push every status change there is now (on a ManualClock: after `advance()`) and wait until
        every push under way is answered or given up; how many pushes were queued."""
        return await self.pusher.flush()

    def reset_stats(self) -> None:
        self.requests.clear()
        self.overlaps.clear()
        self.terminal_sent_at.clear()
        self.token_requests = 0
        self.creates.clear()
        self.pusher.reset()

    # -- figures ---------------------------------------------------------------------------------

    def request_rate(self, since: float | None = None) -> float:
        """infobymodelid requests per second that started since `since` (default: the first one), until now."""
        starts = [r.started for r in self.requests if since is None or r.started >= since]
        if not starts:
            return 0.0
        span = time.monotonic() - (since if since is not None else min(starts))
        return len(starts) / span if span > 0 else 0.0

    def peak_rate(self, window: float = 1.0) -> float:
        """The most infobymodelid requests that started within any `window` seconds, per second."""
        starts = sorted(r.started for r in self.requests)
        best, lo = 0, 0
        for hi, t in enumerate(starts):
            while t - starts[lo] > window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best / window

    def stats(self) -> dict[str, Any]:
        return {
            "requests": len(self.requests),
            "by_code": dict(Counter(str(r.code) for r in self.requests)),  # "None": not the envelope
            "by_http_status": dict(Counter(str(r.http_status) for r in self.requests)),
            "ids_seen": len(self._first_seen),
            "in_flight": sum(self._in_flight.values()),
            "overlaps": dict(self.overlaps),
            "overlap_total": sum(self.overlaps.values()),
            "terminal_sent": len(self.terminal_sent_at),
            "terminal_sent_at": dict(self.terminal_sent_at),
            "ended_at": self.ended_at(),
            "token_requests": self.token_requests,
            "request_rate": self.request_rate(),
            "peak_rate_1s": self.peak_rate(),
            "faults": self._fault_state(),
            "slow_seconds": self.slow_seconds,
            "latency": self.config.latency,
            "workload": None if self.config.workload is None else self.config.workload.spec(),
            "creates": [asdict(c) for c in self.creates],
            "create_count": len(self.creates),
            "create_faults": self.create_faults.model_dump(),
            **self.pusher.stats(),
        }

    def _fault_state(self) -> dict[str, Any]:
        return {**asdict(self.faults), "auth_failing": self.auth_failing}

    # -- Akool behaviour -------------------------------------------------------------------------

    def _outcome(self, vid: str) -> Outcome:
        if (script := self._scripts.get(vid)) is not None:
            return script.outcome
        if not vid or vid.startswith(("unknown", "missing")):
            return "unknown"
        return "failed" if vid.startswith("fail") else "completed"

    def _check_auth(self, headers: Headers) -> int:
        cfg = self.config
        if cfg.api_key is None and cfg.client_id is None:
            return 1000
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():  # Bearer wins over x-api-key
            return 1000 if token.strip() in self._tokens else 1101
        key = headers.get("x-api-key")
        if not key:
            return 1102
        if cfg.api_key is not None and secrets.compare_digest(key.encode(), cfg.api_key.encode()):
            return 1000
        return 1101

    def _timeline(self, vid: str) -> Timeline | None:
        """The id's timeline under the configured workload (None: no workload)."""
        if self.config.workload is None:
            return None
        if (timeline := self._timelines.get(vid)) is None:
            timeline = self._timelines[vid] = self.config.workload.timeline(vid)
        return timeline

    def _durations(self, vid: str) -> tuple[float, float]:
        """(queueing, processing) seconds of an id: its script's, else its workload timeline's, else
        the configured ones."""
        script = self._scripts.get(vid)
        if (timeline := self._timeline(vid)) is not None:
            queue, process = timeline.queue_seconds, timeline.process_seconds
        else:
            queue, process = self.config.queue_seconds, self.config.process_seconds
        if script is not None:
            queue = queue if script.queue_seconds is None else script.queue_seconds
            process = process if script.process_seconds is None else script.process_seconds
        return queue, process

    def ended_at(self) -> dict[str, float]:
        """When each id seen so far ends (or ended), as Unix time: first seen + queueing + processing.
        Benchmarks measure delays from this moment, not from the poll that saw it."""
        return {
            vid: created_ms / 1000 + sum(self._durations(vid))
            for vid, (_, created_ms) in self._first_seen.items()
        }

    def _job_data(self, vid: str, outcome: Outcome) -> dict[str, Any]:
        seen_mono, created_ms = self._first_seen[vid]
        queue, process = self._durations(vid)
        elapsed = self.clock() - seen_mono
        h = hashlib.sha1(vid.encode()).hexdigest()
        data: dict[str, Any] = {
            "_id": vid if vid in self._created else h[:24],
            "create_time": created_ms,
            "uid": 100000 + int(h[24:30], 16) % 900000,
            "team_id": h[16:40],
            "video_id": f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}",
            "type": 2,
            "from": 2,
            "faceswap_quality": 2,
            "storage_loc": 1,
            "external_video": "",
            "video_lock_duration": 12.5,
            "deduction_lock_duration": 20,
            "deduction_duration": 0,
            "video": "",
        }
        timeline = self._timeline(vid)
        if elapsed < queue + process and timeline is not None:
            data["video_status"] = 1 if elapsed < queue else 2
            fraction = (elapsed - queue) / process if process > 0 else 0.0
            if (progress := timeline.progress_at(fraction)) is not None:
                data["progress"] = progress  # a silent job shows no progress field
        elif elapsed < queue:
            data.update(video_status=1, progress=0)
        elif elapsed < queue + process:
            data.update(video_status=2, progress=min(99, int(100 * (elapsed - queue) / process)))
        elif outcome == "failed":
            data.update(video_status=4, progress=0, error_code=FAILED_ERROR_CODE, error_reason=FAILED_REASON)
        else:
            data.update(video_status=3, progress=100, deduction_duration=20)
            data["video"] = _result_url(vid)
            data["audio_splits"] = {
                "original_srt_url": f"{MEDIA_BASE}/subtitles/{vid}.original.srt",
                "translated_srt_url": f"{MEDIA_BASE}/subtitles/{vid}.translated.srt",
                "no_caption_video_url": f"{MEDIA_BASE}/videos/{vid}.no-caption.mp4",
            }
        return data

    def _roll(self, probability: float) -> bool:
        return probability > 0 and self.rng.random() < probability

    async def _answer_info(self, request: Request, vid: str) -> tuple[int | None, int, Response]:
        outcome = self._outcome(vid)
        if outcome != "unknown" and vid not in self._first_seen:
            self._first_seen[vid] = (self.clock(), int(time.time() * 1000))
        delay = self.config.latency + (self.slow_seconds if self._roll(self.faults.slow) else 0.0)
        if delay > 0 and not await _sleep_unless_disconnected(request, delay):
            return None, CLIENT_CLOSED, Response(status_code=CLIENT_CLOSED)
        if self._roll(self.faults.http_500):
            return None, 500, PlainTextResponse("Internal Server Error", status_code=500)
        if self._roll(self.faults.bad_body):
            return None, 200, HTMLResponse("<html>oops</html>")
        code = 1005 if self._roll(self.faults.throttle) else 1101 if self.auth_failing else 1000
        if code == 1000:
            code = self._check_auth(request.headers)
        if code == 1000 and outcome == "unknown":
            code = 1008
        if code != 1000:
            return code, 200, JSONResponse({"code": code, "msg": MESSAGES[code]})
        data = self._job_data(vid, outcome)
        if data["video_status"] in (3, 4) and vid not in self.terminal_sent_at:
            self.terminal_sent_at[vid] = time.time()
        return 1000, 200, JSONResponse({"code": 1000, "msg": "OK", "data": data})

    async def _info(self, request: Request, video_model_id: str = "") -> Response:
        vid = video_model_id
        started = time.monotonic()
        in_flight = self._in_flight.get(vid, 0)
        if in_flight:
            self.overlaps[vid] = self.overlaps.get(vid, 0) + 1
        self._in_flight[vid] = in_flight + 1
        code: int | None = None
        status = CLIENT_CLOSED  # stays so if the handler is cancelled
        try:
            code, status, response = await self._answer_info(request, vid)
            return response
        finally:
            left = self._in_flight.pop(vid) - 1
            if left:
                self._in_flight[vid] = left
            self.requests.append(RequestRecord(vid, started, time.monotonic(), code, status))

    async def _get_token(self, request: Request) -> JSONResponse:
        self.token_requests += 1
        if self.config.latency > 0:
            await asyncio.sleep(self.config.latency)
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        creds = body if isinstance(body, dict) else {}
        cfg = self.config
        if cfg.client_id is None:
            accepted = cfg.api_key is None  # an open simulator hands tokens to anyone
        else:
            accepted = (
                creds.get("clientId") == cfg.client_id and creds.get("clientSecret") == cfg.client_secret
            )
        if not accepted:
            return JSONResponse({"code": 1101, "msg": "Invalid clientId or clientSecret"})
        token = secrets.token_urlsafe(24)
        self._tokens.add(token)
        return JSONResponse({"code": 1000, "msg": "OK", "token": token})

    async def _create(self, request: Request) -> JSONResponse:
        """createbytranslate: one new id per language of `language` (comma-separated), each starting
        its lifecycle now; pushes to `webhookUrl` when given. Every request lands in `creates`."""
        try:
            body: Any = json.loads(await request.body() or b"null")
        except ValueError:
            body = None
        record = CreateRecord(time.time(), body, 1000, [])
        self.creates.append(record)
        if self.config.latency > 0:
            await asyncio.sleep(self.config.latency)
        fields: dict[str, Any] = body if isinstance(body, dict) else {}
        url, language, hook = fields.get("url"), fields.get("language"), fields.get("webhookUrl")
        langs = [x.strip() for x in language.split(",") if x.strip()] if isinstance(language, str) else []
        faults = self.create_faults
        record.code = 1101 if self.auth_failing else self._check_auth(request.headers)
        if record.code == 1000 and (not url or not isinstance(url, str) or not langs):
            record.code = 1003
        if record.code == 1000 and faults.error_code is not None:
            record.code = faults.error_code
            msg = faults.error_msg or MESSAGES.get(record.code, "Error")
            return JSONResponse({"code": record.code, "msg": msg})
        if record.code != 1000:
            return JSONResponse({"code": record.code, "msg": MESSAGES[record.code]})
        results: list[dict[str, Any]] = []
        for lang in langs:
            if lang in faults.fail_languages:
                results.append({"code": faults.fail_code, "msg": faults.fail_msg, "data": {"language": lang}})
                continue
            vid = secrets.token_hex(12)  # 24 hex digits, like Akool's ids
            self._created[vid] = lang
            self._first_seen[vid] = (self.clock(), int(time.time() * 1000))
            record.ids.append(vid)
            if isinstance(hook, str) and hook and self.pusher.credentials() is not None:
                self.push_to(vid, hook)
            data = {**self._job_data(vid, "completed"), "video_status": 1, "progress": 0, "video": ""}
            data.update({k: fields[k] for k in ("source_language", "lipsync", "webhookUrl") if k in fields})
            results.append({"code": 1000, "msg": "OK", "data": {**data, "language": lang, "url": url}})
        if faults.delay > 0:  # the jobs exist (and cost) whether or not the caller still waits
            await asyncio.sleep(faults.delay)
        made = [r["data"] for r in results if r["code"] == 1000]
        if not made:  # every language failed: the first failure is the answer
            record.code = results[0]["code"]
            return JSONResponse({"code": record.code, "msg": results[0]["msg"]})
        answer: dict[str, Any] = {"code": 1000, "msg": "OK", "data": made[0]}
        if len(langs) > 1:
            answer["all_results"] = results
        return JSONResponse(answer)

    def _push_status(self, vid: str) -> tuple[int, str] | None:
        outcome = self._outcome(vid)
        if outcome == "unknown" or vid not in self._first_seen:
            return None
        data = self._job_data(vid, outcome)
        return data["video_status"], data["video"]

    # -- the app ---------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            await self.pusher.start()
            try:
                yield
            finally:
                await self.pusher.stop()

        app = FastAPI(title="Akool simulator", docs_url=None, redoc_url=None, lifespan=lifespan)
        app.add_api_route(INFO_PATH, self._info, methods=["GET"], include_in_schema=False)
        app.add_api_route(TOKEN_PATH, self._get_token, methods=["POST"], include_in_schema=False)
        app.add_api_route(CREATE_PATH, self._create, methods=["POST"], include_in_schema=False)
        app.include_router(push_routes(self.pusher))

        @app.post("/_sim/faults")
        async def faults(body: FaultsBody) -> dict[str, Any]:
            self.set_faults(**body.model_dump(include={"http_500", "slow", "bad_body", "throttle"}))
            if body.auth_failing is not None:
                self.auth_failing = body.auth_failing
            if body.slow_seconds is not None:
                self.slow_seconds = body.slow_seconds
            if body.latency is not None:
                self.config.latency = body.latency
            return {"faults": self._fault_state()}

        @app.post("/_sim/script")
        async def script(body: ScriptBody) -> dict[str, Any]:
            self.script(**body.model_dump())
            return body.model_dump()

        @app.post("/_sim/create_faults")
        async def create_faults(body: CreateFaults) -> dict[str, Any]:
            self.create_faults = body
            return {"create_faults": body.model_dump()}

        @app.post("/_sim/revoke_tokens")
        async def revoke_tokens() -> dict[str, Any]:
            revoked = len(self._tokens)
            self.revoke_tokens()
            return {"revoked": revoked}

        @app.get("/_sim/stats")
        async def stats() -> dict[str, Any]:
            return self.stats()

        @app.post("/_sim/reset_stats")
        async def reset_stats() -> dict[str, Any]:
            self.reset_stats()
            return self.stats()

        return app


def _result_url(vid: str) -> str:
    return f"{MEDIA_BASE}/videos/{vid}.mp4"


async def _sleep_unless_disconnected(request: Request, seconds: float) -> bool:
    """Sleep `seconds`; False as soon as the client hangs up (so in-flight counts follow the connection)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 0.05))
        if await request.is_disconnected():
            return False
    return True


async def run_simulator(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve a simulator with uvicorn until cancelled (or interrupted)."""
    simulator = Simulator(config)
    server = uvicorn.Server(uvicorn.Config(simulator.app, host=host, port=port, log_level="info"))
    task = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise


__all__ = [
    "CreateFaults",
    "CreateRecord",
    "Faults",
    "ManualClock",
    "RequestRecord",
    "Simulator",
    "SimulatorConfig",
    "run_simulator",
]
