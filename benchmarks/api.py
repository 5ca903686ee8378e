"""API under load: the relay in its own process with N jobs already in its database.

The database is bulk-inserted through the app's row builder: a share of the jobs `completed` with a
delivered callback event each (a dashboard of a service that has been running), the rest unfinished
but not due for days, so the pollers are idle-ish. Newly registered jobs are polled as usual against
a simulator subprocess at the default RELAY_AKOOL_RATE_LIMIT (20/s), as in production.

- GET /jobs (first page, which carries the summary): sequential requests, p50/p99.
- GET /stats?minutes=60 (the console's charts): sequential requests, p50/p99. The completed jobs
  finished evenly over the last `--api-finished-over` seconds (a day: about 3,750 of 90,000 in the
  hour charted; 0: all of them in the last minute, the worst case).
- POST /jobs/batch, 1,000 jobs per request: sequential requests, jobs/s.
- POST /jobs: C concurrent workers from one httpx client, requests/s and p50/p99.

The load client runs in the harness process; the relay's CPU comes from /proc for its process alone.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import API_KEY, BASE_ENV, NOWHERE, Proc, say
from benchmarks.data import Databases, insert_jobs
from benchmarks.latency import summary


def run(dbs: Databases, opts: Any, log_dir: Path) -> dict[str, Any]:
    n = opts.api_jobs
    say(f"[api] {n:,} jobs in the database ({opts.api_finished_share:.0%} completed): bulk insert")
    url = dbs.fresh("api")
    inserted = asyncio.run(
        insert_jobs(
            url,
            n,
            prefix="api-",
            due_in=30 * 86400,
            job_timeout=60 * 86400,
            finished_share=opts.api_finished_share,
            finished_over=opts.api_finished_over,
        )
    )
    say(f"[api]   inserted in {inserted:.1f} s; starting the relay")
    sim_args = ["--queue-seconds", "1e9", "--process-seconds", "1", "--api-key", API_KEY]
    with Proc("simulator", *sim_args, log_dir=log_dir) as sim:
        env = {**BASE_ENV, "DATABASE_URL": url, "AKOOL_BASE_URL": sim.url}
        with Proc("relay", env=env, log_dir=log_dir) as relay:
            figures = asyncio.run(_load(relay, opts))
    figures["jobs_in_database"] = n
    figures["insert_s"] = round(inserted, 1)
    return figures


async def _load(relay: Proc, opts: Any) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=opts.concurrency * 2)
    async with httpx.AsyncClient(base_url=relay.url, timeout=120, limits=limits) as client:
        get = await _gets(client, relay, opts.api_gets)
        say(f"[api]   GET /jobs p50 {get['p50_ms']} ms, p99 {get['p99_ms']} ms; GET /stats next")
        stats = await _stats(client, relay, opts.api_gets)
        say(f"[api]   GET /stats?minutes=60 p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms")
        batch = await _batches(client, relay, opts.api_batches)
        say(f"[api]   POST /jobs/batch {batch['jobs_per_s']} jobs/s; POST /jobs x{opts.concurrency} next")
        single = await _singles(client, relay, opts.api_posts, opts.concurrency)
        say(f"[api]   POST /jobs {single['requests_per_s']} requests/s")
    return {"get_jobs": get, "get_stats": stats, "post_jobs_batch": batch, "post_jobs": single}


async def _gets(client: httpx.AsyncClient, relay: Proc, count: int) -> dict[str, Any]:
    for _ in range(5):  # warm-up: connections, caches
        (await client.get("/jobs")).raise_for_status()
    times = []
    cpu0, t0 = relay.cpu_seconds(), time.monotonic()
    for _ in range(count):
        started = time.perf_counter()
        response = await client.get("/jobs")
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    elapsed = time.monotonic() - t0
    page = response.json()
    return {
        "requests": count,
        **summary(times),
        "relay_cpu_ms_per_request": round(1000 * (relay.cpu_seconds() - cpu0) / count, 2),
        "items": len(page["items"]),
        "summary_jobs": sum(page["summary"]["jobs"].values()),
        "requests_per_s": round(count / elapsed, 1),
    }


async def _stats(client: httpx.AsyncClient, relay: Proc, count: int) -> dict[str, Any]:
    path = "/stats?minutes=60"
    for _ in range(5):  # warm-up: connections, caches
        (await client.get(path)).raise_for_status()
    times = []
    cpu0, t0 = relay.cpu_seconds(), time.monotonic()
    for _ in range(count):
        started = time.perf_counter()
        response = await client.get(path)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    elapsed = time.monotonic() - t0
    buckets = response.json()["buckets"]
    return {
        "requests": count,
        **summary(times),
        "relay_cpu_ms_per_request": round(1000 * (relay.cpu_seconds() - cpu0) / count, 2),
        "buckets": len(buckets),
        "finished_in_window": sum(sum(b["finished"].values()) for b in buckets),
        "delivered_in_window": sum(b["delivered"] for b in buckets),
        "requests_per_s": round(count / elapsed, 1),
    }


async def _batches(client: httpx.AsyncClient, relay: Proc, batches: int) -> dict[str, Any]:
    times = []
    created = 0
    cpu0, t0 = relay.cpu_seconds(), time.monotonic()
    for b in range(batches):
        jobs = [{"video_model_id": f"batch-{b}-{i}", "callback_url": NOWHERE} for i in range(1000)]
        started = time.perf_counter()
        response = await client.post("/jobs/batch", json={"jobs": jobs})
        times.append(time.perf_counter() - started)
        response.raise_for_status()
        created += sum(r["status"] == 201 for r in response.json()["results"])
    elapsed = time.monotonic() - t0
    return {
        "requests": batches,
        "jobs": batches * 1000,
        "created": created,
        "jobs_per_s": round(batches * 1000 / elapsed, 1),
        **summary(times),
        "relay_cpu_ms_per_job": round(1000 * (relay.cpu_seconds() - cpu0) / (batches * 1000), 3),
    }


async def _singles(client: httpx.AsyncClient, relay: Proc, count: int, concurrency: int) -> dict[str, Any]:
    numbers = itertools.count()
    times: list[float] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        while (i := next(numbers)) < count:
            body = {"video_model_id": f"single-{i}", "callback_url": NOWHERE}
            started = time.perf_counter()
            response = await client.post("/jobs", json=body)
            times.append(time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    cpu0, t0 = relay.cpu_seconds(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - t0
    return {
        "requests": count,
        "concurrency": concurrency,
        "statuses": {str(k): v for k, v in statuses.items()},
        "requests_per_s": round(count / elapsed, 1),
        **summary(times),
        "relay_cpu_ms_per_request": round(1000 * (relay.cpu_seconds() - cpu0) / count, 2),
        "relay_cpu_utilisation": round((relay.cpu_seconds() - cpu0) / elapsed, 2),
    }
