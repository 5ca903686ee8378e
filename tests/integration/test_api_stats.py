"""GET /stats and the summary's budget (SPEC §3), over real HTTP on SQLite and PostgreSQL.

Two tenants' jobs are driven step by step to completed, failed and cancelled, their callbacks to a
receiver that accepts and one that always answers 500 (dead after two attempts). The buckets must add
up to exactly the rows the caller sees through GET /jobs/{id} (finished jobs by status, deliveries,
failed attempts, latency percentiles), scoped to the caller; Akool requests by outcome only in an
operator's view, adding up to the requests the simulator received.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.relay import DUE_AT_ONCE, PAST_THE_END, RelayFactory, RunningRelay, drain, poll
from tests.support.tenants import ADMIN, AS_ADMIN, bearer, make_tenant

SETTINGS: dict[str, Any] = {**DUE_AT_ONCE, "RELAY_ADMIN_TOKENS": ADMIN, "RELAY_RETRY_SCHEDULE": "0.001"}
FINISHED = ("cancelled", "completed", "expired", "failed")


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def percentile_cont(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = p * (len(ordered) - 1)
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


async def stats(r: RunningRelay, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = await r.client.get("/stats", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def expected(r: RunningRelay, headers: dict[str, str], since: datetime) -> dict[str, Any]:
    """What the buckets must add up to, from the jobs' own JSON."""
    listed = await r.client.get("/jobs", params={"limit": 500}, headers=headers)
    finished: Counter[str] = Counter()
    latencies: list[float] = []
    failed = 0
    for item in listed.json()["items"]:
        job = (await r.client.get(f"/jobs/{item['video_model_id']}", headers=headers)).json()
        if job["finished_at"] and when(job["finished_at"]) >= since:
            finished[job["status"]] += 1
        for d in job["deliveries"]:
            if d["delivered_at"]:
                latencies.append(
                    (when(d["delivered_at"]) - when(d["created_at"])) / timedelta(milliseconds=1)
                )
            failed += sum(
                1 for a in d["attempts"] if not (a["status_code"] and 200 <= a["status_code"] < 300)
            )
    return {"finished": finished, "latencies": latencies, "failed": failed}


def totals(body: dict[str, Any]) -> dict[str, Any]:
    buckets = body["buckets"]
    finished: Counter[str] = Counter()
    for b in buckets:
        finished.update({k: v for k, v in b["finished"].items() if v})
    return {
        "finished": finished,
        "delivered": sum(b["delivered"] for b in buckets),
        "failed": sum(b["attempts_failed"] for b in buckets),
    }


def check(body: dict[str, Any], want: dict[str, Any], *, minutes: int = 60) -> None:
    buckets = body["buckets"]
    assert body["minutes"] == minutes and len(buckets) == minutes
    starts = [when(b["at"]) for b in buckets]
    assert all(b - a == timedelta(minutes=1) for a, b in pairwise(starts))
    assert all(s.second == 0 and s.microsecond == 0 for s in starts)
    assert starts[-1] <= datetime.now(UTC) < starts[-1] + timedelta(minutes=1)  # the current minute last
    assert all(set(b["finished"]) == set(FINISHED) for b in buckets)
    got = totals(body)
    assert got["finished"] == want["finished"]
    assert got["delivered"] == len(want["latencies"])
    assert got["failed"] == want["failed"]
    for b in buckets:
        if not b["delivered"]:
            assert b["latency_p50_ms"] is None and b["latency_p99_ms"] is None
    busy = [b for b in buckets if b["delivered"]]
    if len(busy) == 1:  # everything delivered in one minute: the percentiles of all the rows
        [b] = busy
        assert abs(b["latency_p50_ms"] - percentile_cont(want["latencies"], 0.5)) < 0.002
        assert abs(b["latency_p99_ms"] - percentile_cont(want["latencies"], 0.99)) < 0.002


async def test_stats_buckets_add_up_to_the_rows_per_tenant(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    sim = stepped_simulator[0]
    good, bad = Receiver(), Receiver(behaviour=Behaviour(status=500))
    async with (
        serve_in_background(good.app) as good_base,
        serve_in_background(bad.app) as bad_base,
        start_relay(driven=True, **SETTINGS) as r,
    ):
        started = datetime.now(UTC)
        ta, tb = (await make_tenant(r, "stats-a"))["token"], (await make_tenant(r, "stats-b"))["token"]
        ok_url, bad_url = good.url(good_base), bad.url(bad_base)
        jobs = [
            (ta, "a-ok-1", ok_url, ["queueing", "completed"]),
            (ta, "a-ok-2", ok_url, ["completed"]),
            (ta, "fail-a-1", ok_url, ["failed"]),
            (ta, "a-bad-1", bad_url, ["completed"]),
            (tb, "b-ok-1", ok_url, ["completed"]),
            (tb, "fail-b-1", bad_url, ["failed"]),
            (ta, "unknown-a-cancel", ok_url, ["completed"]),
            (tb, "unknown-b-pending", ok_url, ["completed"]),
        ]
        for token, vid, url, events in jobs:
            body = {"video_model_id": vid, "callback_url": url, "events": events}
            assert (await r.client.post("/jobs", json=body, headers=bearer(token))).status_code == 201
        assert (await r.client.delete("/jobs/unknown-a-cancel", headers=bearer(ta))).status_code == 204
        await poll(r)
        sim_clock.advance(PAST_THE_END)
        await poll(r)
        await drain(r)

        a, b = await expected(r, bearer(ta), started), await expected(r, bearer(tb), started)
        assert a["finished"] == {"completed": 3, "failed": 1, "cancelled": 1}
        assert b["finished"] == {"completed": 1, "failed": 1}
        assert a["failed"] == 2 and b["failed"] == 2  # each dead callback: two attempts, both 500
        everyone = {
            "finished": a["finished"] + b["finished"],
            "latencies": a["latencies"] + b["latencies"],
            "failed": a["failed"] + b["failed"],
        }

        mine_a = await stats(r, bearer(ta))
        check(mine_a, a)
        check(await stats(r, bearer(tb)), b)
        check(await stats(r, AS_ADMIN, tenant="stats-a"), a)
        admin = await stats(r, AS_ADMIN)
        check(admin, everyone)
        check(await stats(r, AS_ADMIN, minutes=5), everyone, minutes=5)

        # Akool requests: an operator's view only; they add up to what the simulator received.
        assert all("akool_requests" not in bucket for bucket in mine_a["buckets"])
        requests: Counter[str] = Counter()
        for bucket in admin["buckets"]:
            requests.update(bucket["akool_requests"])
        assert sum(requests.values()) == len(sim.requests)
        assert requests["ok"] > 0 and requests["not_found"] > 0  # unknown-… ids: 1008
        assert set(requests) <= {"ok", "not_found", "throttled", "auth_failed", "billing", "transient"}

        # The summary's budget: the rate in force, and the requests spent over the last minute.
        budget = (await r.client.get("/jobs", headers=AS_ADMIN)).json()["summary"]["upstream"]["budget"]
        assert budget["rate"] == r.settings.akool_rate_limit
        assert 0 < budget["spent_per_second"] <= len(sim.requests) / 60


async def test_stats_window_is_validated(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True, RELAY_API_TOKENS="tenant-token-0123456789") as r:
        for bad in ("0", "1441", "-5", "sixty", "1.5"):
            response = await r.client.get("/stats", params={"minutes": bad})
            assert response.status_code == 422, (bad, response.text)
            assert response.json()["detail"][0]["loc"] == ["query", "minutes"]
        for good, n in (("1", 1), ("1440", 1440)):
            body = await stats(r, {}, minutes=good)
            assert len(body["buckets"]) == n and body["minutes"] == n
            empty = body["buckets"][0]
            assert empty["finished"] == dict.fromkeys(FINISHED, 0) and empty["delivered"] == 0
            assert empty["latency_p50_ms"] is None and "akool_requests" not in empty  # a tenant's token
        assert len((await stats(r, {}))["buckets"]) == 60  # the default
        # A tenant naming a tenant: 422, as on /jobs; no token: 401.
        assert (await r.client.get("/stats", params={"tenant": "default"})).status_code == 422
        anonymous = await r.client.get("/stats", headers={"authorization": ""})
        assert anonymous.status_code == 401
