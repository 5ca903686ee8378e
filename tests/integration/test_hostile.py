"""Hostile input (issue 3 item 6): fuzzing from the relay's own OpenAPI, oversized bodies, bad queries.

The schemathesis run talks to a relay served for real on loopback, with its token set as the
`default` tenant's and as an admin token, and the bearer header sent (so the operator routes are
fuzzed too). Its client is blocking (requests), so it runs in a worker thread while the event
loop keeps serving the relay. Every operation gets positive and negative examples; each answer must
not be a 5xx and must conform to the schema (declared status code, content type, body schema).

The jobs it finds are seeded by a driven relay (`driven=True`, stepped, the simulator on `sim_clock`);
the relay the fuzzer then talks to runs its loops for real on the same database, because a driven relay
answers /readyz 503 (its pollers are not running) and a 5xx is a finding. The other relays here are
driven: the tests only send requests.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis.errors import HypothesisException
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err, Ok
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api.bodylimit import MAX_BODY_BYTES
from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.relay import DUE_AT_ONCE, RelayFactory, RunningRelay, drain, poll

TOKEN = "tok-hostile-7f3a9c"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Examples per operation and generation mode: ~300 requests per database (operations without input
# give one example; only those with a body or query can be negated).
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 20}
# ~25 s on an idle machine; the budget only stops a run on a badly overloaded one (pytest's timeout is
# 120 s), and the run must still have made the requests asserted below.
FUZZ_BUDGET_SECONDS = 80.0


@dataclass
class Finding:
    operation: str
    mode: str
    status: int | None
    problem: str
    reproduce: str

    def __str__(self) -> str:
        return f"{self.operation} [{self.mode}] -> {self.status}: {self.problem}\n    {self.reproduce}"


@dataclass
class FuzzReport:
    requests: int
    findings: list[Finding]
    statuses: dict[int, int]
    skipped: list[str]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text[:600]}"


class _Fuzzer:
    """Sends generated cases and records every distinct problem instead of stopping at the first."""

    def __init__(self, base_url: str, budget: float) -> None:
        self.base_url = base_url
        self.deadline = time.monotonic() + budget
        self.session = requests.Session()
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.findings: dict[tuple[str, str, str], Finding] = {}

    def send(self, case: Any, mode: str) -> None:
        if time.monotonic() > self.deadline:
            return
        label = case.operation.label
        try:
            response = case.call(base_url=self.base_url, session=self.session, headers=AUTH, timeout=10)
        except Exception as exc:  # a transport failure is a finding too (a dropped connection)
            finding = Finding(label, mode, None, _first_line(exc), case.as_curl_command(headers=AUTH))
            self.findings.setdefault((label, mode, type(exc).__name__), finding)
            return
        self.sent += 1
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        try:
            case.validate_response(response, checks=CHECKS, headers=AUTH)
        except FailureGroup as group:
            for failure in group.exceptions:
                self._record(case, mode, response, f"{failure.code} {failure.title}: {failure.message}")
        except Exception as exc:
            self._record(case, mode, response, _first_line(exc))

    def _record(self, case: Any, mode: str, response: Any, problem: str) -> None:
        label = case.operation.label
        finding = Finding(
            label,
            mode,
            response.status_code,
            problem.replace("\n", " ")[:400] + f"\n    body: {response.text[:300]!r}",
            case.as_curl_command(headers=AUTH),
        )
        self.findings.setdefault((label, mode, f"{response.status_code} {problem[:60]}"), finding)

    def run(self, strategy: Any, mode: str, examples: int) -> None:
        if time.monotonic() > self.deadline:
            return  # the budget is spent: examples that would not be sent only cost generation time

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],  # no shrinking: every finding is recorded, not raised
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @given(case=strategy)
        def examples_of(case: Any) -> None:
            self.send(case, mode)

        examples_of()


def _fuzz(openapi_url: str, base_url: str) -> FuzzReport:
    """Blocking: load the live schema and send every operation its generated examples."""
    schema = schemathesis.openapi.from_url(openapi_url, headers=AUTH, timeout=10)
    fuzzer = _Fuzzer(base_url, FUZZ_BUDGET_SECONDS)
    skipped: list[str] = []
    results = list(schema.get_all_operations())
    invalid = [result.err() for result in results if isinstance(result, Err)]
    assert not invalid, f"the relay's OpenAPI has operations schemathesis cannot use: {invalid}"
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) >= 10, [op.label for op in operations]
    for mode, examples in EXAMPLES.items():
        for operation in operations:
            if mode is GenerationMode.NEGATIVE and not (len(operation.query) or len(operation.body)):
                # Only an unconstrained path string (or nothing at all): there is nothing to negate.
                skipped.append(f"{operation.label} [negative]: no constrained input")
                continue
            try:
                fuzzer.run(operation.as_strategy(generation_mode=mode), mode.value, examples)
            except HypothesisException as exc:  # e.g. nothing to negate in an operation without input
                skipped.append(f"{operation.label} [{mode.value}]: {_first_line(exc)}")
    fuzzer.session.close()
    return FuzzReport(
        fuzzer.sent, list(fuzzer.findings.values()), dict(sorted(fuzzer.statuses.items())), skipped
    )


# The seeding relay plans polls and callback retries 1 ms ahead: what a step leaves to do again is due
# at the next one.
RETRIES_AT_ONCE: dict[str, Any] = {**DUE_AT_ONCE, "RELAY_RETRY_SCHEDULE": "0.001,0.001,0.001"}
# Simulated seconds between seeding polls, for jobs queueing 0.1 s then processing 0.2 s: queueing,
# processing (a quarter done), processing (half done: a progress event), then past the end.
SEED_STEPS = (0.0, 0.15, 0.05, 1.0)


async def _seed(r: RunningRelay, sim: Simulator, clock: ManualClock, hook_url: str) -> None:
    """Jobs with transitions, failed and delivered attempts, so the answers have every shape."""
    sim.script("hostile-ok", queue_seconds=0.1, process_seconds=0.2)
    sim.script("hostile-fail", outcome="failed", queue_seconds=0.1, process_seconds=0.2)
    for vid in ("hostile-ok", "hostile-fail"):
        created = await r.client.post(
            "/jobs",
            json={
                "video_model_id": vid,
                "callback_url": hook_url,
                "metadata": {"seed": vid, "nested": {"a": [1, 2.5, None, "x"]}},
                "events": ["queueing", "processing", "progress", "completed", "failed", "expired"],
            },
        )
        assert created.status_code == 201, created.text
    for seconds in SEED_STEPS:
        clock.advance(seconds)
        assert await poll(r) == 2
        await drain(r)
    for vid, ending in (("hostile-ok", "job.completed"), ("hostile-fail", "job.failed")):
        job = (await r.client.get(f"/jobs/{vid}")).json()
        assert job["finished_at"] and job["delivery"] == "delivered", job
        types = [d["type"] for d in job["deliveries"]]
        assert types == ["job.queueing", "job.processing", "job.progress", ending], types
        for delivery in job["deliveries"]:
            assert [a["status_code"] for a in delivery["attempts"]] == [500, 200], delivery


@pytest.fixture
async def hostile_relay(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
) -> AsyncIterator[RunningRelay]:
    sim, _ = stepped_simulator
    rec, hook_url = receiver
    rec.behaviour = Behaviour(fail_first=1)  # every event has a failed attempt before it is delivered
    async with start_relay(driven=True, RELAY_API_TOKENS=TOKEN, **RETRIES_AT_ONCE) as seeder:
        await _seed(seeder, sim, sim_clock, hook_url)
    # Jobs the fuzzer registers point at generated callback URLs: keep them from ever changing state
    # (every poll is answered 1005, which also slows polling to a trickle; the simulated clock stands
    # still as well), so nothing is sent to those hosts.
    sim.set_faults(throttle=1.0)
    # TOKEN is an admin token here too: the fuzzer reaches the operator routes (/tenants…) as well.
    async with start_relay(RELAY_API_TOKENS=TOKEN, RELAY_ADMIN_TOKENS=TOKEN, RELAY_AKOOL_RATE_LIMIT=20) as r:
        yield r


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    hostile_relay: RunningRelay,
) -> None:
    r = hostile_relay
    started = time.monotonic()
    report = await asyncio.to_thread(_fuzz, f"{r.base_url}/openapi.json", r.base_url)
    elapsed = time.monotonic() - started
    print(
        f"\nschemathesis: {report.requests} requests in {elapsed:.1f}s, statuses {report.statuses}, "
        f"{len(report.findings)} findings, {len(report.skipped)} skipped strategies"
    )
    for line in report.skipped:
        print(f"  skipped {line}")
    assert report.requests >= 200, f"only {report.requests} requests were made: {report.skipped}"
    assert not any(s >= 500 for s in report.statuses), report.statuses
    assert not report.findings, "\n".join(str(f) for f in report.findings)
    # The relay still works after the storm.
    assert (await r.client.get("/healthz")).status_code == 200
    assert (await r.client.get("/jobs/hostile-ok")).status_code == 200


async def test_seeded_answers_conform_to_the_schema(hostile_relay: RunningRelay) -> None:
    """The fuzzer rarely guesses a tracked id: check the real answers for known jobs explicitly."""
    r = hostile_relay

    def check_all() -> list[str]:
        schema = schemathesis.openapi.from_url(f"{r.base_url}/openapi.json", headers=AUTH, timeout=10)
        ops = schema["/jobs/{video_model_id}"]
        cases = [
            schema["/jobs"]["GET"].Case(query={"limit": 1}),
            schema["/jobs"]["GET"].Case(query={"status": ["completed", "failed"]}),
            schema["/jobs"]["POST"].Case(
                body={"video_model_id": "hostile-ok", "callback_url": "http://x.test/a"}
            ),
            schema["/jobs/batch"]["POST"].Case(
                body={"jobs": [{"video_model_id": "hostile-ok", "callback_url": "http://x.test/b"}, {"x": 1}]}
            ),
            ops["GET"].Case(path_parameters={"video_model_id": "hostile-ok"}),
            ops["GET"].Case(path_parameters={"video_model_id": "hostile-fail"}),
            ops["PATCH"].Case(
                path_parameters={"video_model_id": "hostile-ok"}, body={"metadata": {"k": "v"}}
            ),
            schema["/jobs/{video_model_id}/redeliver"]["POST"].Case(
                path_parameters={"video_model_id": "hostile-ok"}
            ),
            ops["DELETE"].Case(path_parameters={"video_model_id": "hostile-fail"}),
            schema["/readyz"]["GET"].Case(),
            schema["/metrics"]["GET"].Case(),
            schema["/healthz"]["GET"].Case(),
        ]
        problems: list[str] = []
        for case in cases:
            response = case.call(base_url=r.base_url, headers=AUTH, timeout=10)
            try:
                case.validate_response(response, checks=CHECKS, headers=AUTH)
            except FailureGroup as group:
                problems.extend(
                    f"{case.operation.label} -> {response.status_code}: {f.code} {f.title}: {f.message}"
                    for f in group.exceptions
                )
            except Exception as exc:
                problems.append(f"{case.operation.label} -> {response.status_code}: {_first_line(exc)}")
        return problems

    problems = await asyncio.to_thread(check_all)
    assert not problems, "\n".join(problems)


# -- oversized bodies ------------------------------------------------------------------------------

BODY_ROUTES = [("POST", "/jobs"), ("POST", "/jobs/batch"), ("PATCH", "/jobs/some-job")]


@pytest.fixture
async def guarded_relay(start_relay: RelayFactory) -> AsyncIterator[RunningRelay]:
    async with start_relay(driven=True, RELAY_API_TOKENS=TOKEN) as r:
        yield r


def _oversized_json(size: int) -> bytes:
    """A syntactically valid POST /jobs body of about `size` bytes."""
    head = b'{"video_model_id": "big", "callback_url": "http://x.test/", "metadata": {"pad": "'
    tail = b'"}}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


async def _achunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]
        await asyncio.sleep(0)


async def test_oversized_body_with_content_length_gets_413(guarded_relay: RunningRelay) -> None:
    body = _oversized_json(MAX_BODY_BYTES + 1)
    for method, path in BODY_ROUTES:
        response = await guarded_relay.client.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413, (method, path, response.status_code, response.text)
        assert "detail" in response.json()


async def test_oversized_chunked_body_without_content_length_gets_413(guarded_relay: RunningRelay) -> None:
    body = _oversized_json(MAX_BODY_BYTES + 64 * 1024)
    outcomes = {}
    for method, path in BODY_ROUTES:
        request = guarded_relay.client.build_request(
            method, path, content=_achunks(body), headers={"content-type": "application/json"}
        )
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        response = await guarded_relay.client.send(request)
        outcomes[f"{method} {path}"] = (response.status_code, response.text[:200])
    assert all(status == 413 for status, _ in outcomes.values()), outcomes
    # and the relay is still fine afterwards
    assert (await guarded_relay.client.get("/jobs")).status_code == 200


async def test_a_lying_content_length_is_refused_before_the_body_is_read(
    guarded_relay: RunningRelay,
) -> None:
    """Content-Length above the limit: refused at once, without waiting for a body that never comes."""
    host, port = guarded_relay.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST /jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {MAX_BODY_BYTES * 50}\r\n\r\n{{".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
    assert status_line.split()[1] == b"413", status_line


async def test_a_body_under_the_limit_is_not_refused(guarded_relay: RunningRelay) -> None:
    """The limit is a limit, not a refusal of big-ish bodies: 1.5 MiB, chunked and not, are read."""
    items = [{"video_model_id": f"u{i}", "callback_url": "ftp://x.test/"} for i in range(200)]
    pad = "p" * (1536 * 1024)
    body = httpx.Request("POST", "/", json={"jobs": [*items, {"pad": pad}]}).content
    assert MAX_BODY_BYTES // 2 < len(body) < MAX_BODY_BYTES
    for content in (body, _achunks(body)):
        response = await guarded_relay.client.post(
            "/jobs/batch", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 200, response.text[:500]
        results = response.json()["results"]
        assert len(results) == 201
        assert {item["status"] for item in results} == {422}


# -- bad query values ------------------------------------------------------------------------------


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


BAD_FILTERS: list[dict[str, Any]] = [
    {"status": "bogus"},
    {"status": ["completed", "bogus"]},
    {"status": ""},
    {"status": "COMPLETED"},
    {"status": "completed\u0000"},
    {"limit": "0"},
    {"limit": "501"},
    {"limit": "ten"},
    {"limit": "-1"},
    {"limit": "1e3"},
]

# Cursors that are not one this service issued: each must get 422.
BAD_CURSORS = [
    "!!!",
    "not a cursor",
    "====",
    "%ff",
    "\u00e9\u00e8",
    "\u0000",
    _cursor("id:"),
    _cursor("id:abc"),
    _cursor("id:-5"),
    _cursor("id:1.5"),
    _cursor("id: 7"),
    _cursor("xx:12"),
    _cursor("id:\u00b2"),  # str.isdigit() says yes, int() says no
    base64.urlsafe_b64encode(b"id:\xff\xfe").decode(),
    "x" * 201,
]

# Forged cursors that decode to a number no job id can reach: 422 (or an empty/complete page), never 500.
HUGE_CURSORS = [
    _cursor("id:2147483648"),  # 2**31: past a 32-bit id column
    _cursor("id:9223372036854775808"),  # 2**63: past a 64-bit id column
    _cursor("id:" + "9" * 30),
    _cursor("id:" + "9" * 150),
]


async def test_unknown_status_filters_and_bad_limits_get_422(guarded_relay: RunningRelay) -> None:
    wrong = {}
    for query in BAD_FILTERS:
        response = await guarded_relay.client.get("/jobs", params=query)
        if response.status_code != 422 or not isinstance(response.json().get("detail"), list):
            wrong[repr(query)] = (response.status_code, response.text[:200])
    raw = await guarded_relay.client.get("/jobs?status=%ff&status=%00")
    if raw.status_code != 422:
        wrong["raw status=%ff&status=%00"] = (raw.status_code, raw.text[:200])
    assert not wrong, wrong


async def test_bad_cursors_get_422_not_500(guarded_relay: RunningRelay) -> None:
    wrong = {}
    for cursor in BAD_CURSORS:
        response = await guarded_relay.client.get("/jobs", params={"cursor": cursor})
        if response.status_code != 422 or not isinstance(response.json().get("detail"), list):
            wrong[repr(cursor)] = (response.status_code, response.text[:200])
    raw = await guarded_relay.client.get("/jobs?cursor=%ff%fe")
    if raw.status_code != 422:
        wrong["raw cursor=%ff%fe"] = (raw.status_code, raw.text[:200])
    for cursor in HUGE_CURSORS:
        response = await guarded_relay.client.get("/jobs", params={"cursor": cursor})
        if response.status_code not in (200, 422):
            wrong[repr(cursor)] = (response.status_code, response.text[:200])
    assert not wrong, wrong


async def test_a_real_cursor_pages_through(hostile_relay: RunningRelay) -> None:
    first = (await hostile_relay.client.get("/jobs", params={"limit": 1})).json()
    assert first["next_cursor"]
    second = await hostile_relay.client.get("/jobs", params={"limit": 1, "cursor": first["next_cursor"]})
    assert second.status_code == 200
    assert second.json()["items"][0]["video_model_id"] != first["items"][0]["video_model_id"]
