"""Retention under load, on PostgreSQL: delete 200,000 finished jobs while 1,000 live jobs are polled.

    python -m benchmarks.prune [--database-url postgresql://postgres@127.0.0.1:5432/] [--jobs 200000]

- A fresh database on that server (`akool_relay_bench_prune_*`, dropped at the end; the URL's own
  database is only used to connect), migrated. COPY loads the old jobs: finished 100 days ago, each
  with 3 transitions, 1 delivered event and 1 attempt (2 for one job in ten: a retry), as a busy relay
  leaves them. Then the live jobs: `queueing`, due spread over one poll interval from the moment
  the load is done (after ANALYZE and a CHECKPOINT, so the load's writes do not land in the windows).
- A relay in this process (`app.runtime.Runtime`, started as the app's lifespan starts it) polls the
  live jobs against the simulator (served in this process too), whose jobs never finish: each live
  job is polled every `--interval` s (RELAY_POLL_INTERVAL_MIN = MAX; default 60, the default
  maximum, where a long-queued job settles): 1,000 jobs make about 17 polls/s.
- A sampler reads the live jobs every 0.2 s; each poll's lateness, due → polled, is the new
  `last_polled_at` − the `next_poll_at` the job had before it (the poll's result written).
- `before`: polling alone, after a warm-up; `during`: while `Runtime.prune()` runs one housekeeping
  pass (the minute tick's work, started by hand; the scheduled tick is removed so it cannot start a
  second pass). The deletion rate is the jobs that pass deleted per second of it. The `1 s` tick
  (RELAY_TICK_INTERVAL) is in every figure: a job due just after a tick waits for the next one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from benchmarks.common import API_KEY, BASE_ENV, LagMonitor, ms, percentile, say

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/"
AGE_DAYS = 100  # the old jobs finished this long ago; the relay keeps 90 (the default)
COPY_CHUNK = 50_000
DOWN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)  # a reader's errors while the server restarts


async def _connect(url: str, database: str | None = None) -> Any:
    import sqlalchemy as sa

    u = sa.make_url(url)
    return await asyncpg.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        database=database or u.database or u.username or "postgres",
    )


async def _fetch(url: str, sql: str) -> list[Any]:
    """Rows of one query on a connection of its own (the benchmark's readers, not the relay's)."""
    conn = await _connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


# -- the data ---------------------------------------------------------------------------------------


def _upstream(vid: str, status: int) -> str:
    return json.dumps(
        {
            "_id": uuid.uuid4().hex[:24],
            "video_model_id": vid,
            "video_status": status,
            "progress": 100 if status == 3 else 0,
            "video": f"https://sim.akool.local/videos/{vid}.mp4" if status == 3 else "",
            "create_time": 1_700_000_000_000,
            "update_time": 1_700_000_600_000,
        }
    )


def _job(
    job_id: int, vid: str, *, finished: datetime | None, now: datetime, interval: float = 60.0
) -> dict[str, Any]:
    """A job row (naive UTC datetimes, JSON as text, as COPY wants them)."""
    created = (finished or now) - timedelta(minutes=10)
    row: dict[str, Any] = {
        "id": job_id,
        "video_model_id": vid,
        "callback_url": "https://hooks.example.com/akool",
        "events": json.dumps(["completed", "failed", "expired"]),
        "client_metadata": json.dumps({"order": job_id, "customer": f"c{job_id % 977}"}),
        "created_at": created,
        "expires_at": created + timedelta(days=1),
        "poll_interval": interval,
        "not_found_count": 0,
    }
    if finished is not None:
        row.update(
            status="completed",
            video_status=3,
            progress=100,
            video_url=f"https://sim.akool.local/videos/{vid}.mp4",
            upstream=_upstream(vid, 3),
            updated_at=finished,
            finished_at=finished,
            last_polled_at=finished,
            next_poll_at=None,
            poll_count=6,
            delivery="delivered",
        )
    else:  # live: seen once, queueing, due within the next interval
        row.update(
            status="queueing",
            video_status=1,
            progress=0,
            video_url=None,
            upstream=_upstream(vid, 1),
            updated_at=now,
            finished_at=None,
            last_polled_at=now,
            next_poll_at=now + timedelta(seconds=random.uniform(0, interval)),
            poll_count=1,
            delivery="none",
        )
    return row


async def _copy(conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    for lo in range(0, len(rows), COPY_CHUNK):
        records = [tuple(r[c] for c in columns) for r in rows[lo : lo + COPY_CHUNK]]
        await conn.copy_records_to_table(table, records=records, columns=columns)


async def load(url: str, old: int, live: int, interval: float) -> dict[str, Any]:
    """COPY the old jobs (with their rows), then the live jobs, due over the next `interval` s from
    now; returns the row counts and seconds."""
    started = time.perf_counter()
    now = datetime.now(UTC).replace(tzinfo=None)
    conn = await _connect(url)
    rows = {"jobs": 0, "transitions": 0, "events": 0, "attempts": 0}
    try:
        for lo in range(0, old, COPY_CHUNK):
            ids = range(lo + 1, min(old, lo + COPY_CHUNK) + 1)
            finished = {i: now - timedelta(days=AGE_DAYS, seconds=i) for i in ids}
            jobs = [_job(i, f"old-{i}", finished=finished[i], now=now) for i in ids]
            transitions = [
                {"job_id": i, "from_status": a, "to_status": b, "at": finished[i] - timedelta(seconds=s)}
                for i in ids
                for a, b, s in (("pending", "queueing", 300), ("queueing", "processing", 200))
            ] + [
                {"job_id": i, "from_status": "processing", "to_status": "completed", "at": finished[i]}
                for i in ids
            ]
            events = [
                {
                    "id": i,
                    "webhook_id": f"msg_{uuid.uuid4().hex}",
                    "job_id": i,
                    "type": "job.completed",
                    "body": json.dumps(
                        {"type": "job.completed", "data": {**jobs[k], "created_at": None}}, default=str
                    ),
                    "state": "delivered",
                    "attempts": 2 if i % 10 == 0 else 1,
                    "created_at": finished[i],
                    "next_attempt_at": None,
                    "delivered_at": finished[i] + timedelta(seconds=1),
                }
                for k, i in enumerate(ids)
            ]
            attempts = [
                {
                    "event_id": i,
                    "at": finished[i] + timedelta(seconds=n),
                    "status_code": 500 if n == 0 and i % 10 == 0 else 200,
                    "error": None,
                    "duration_ms": 42.0,
                    "response_excerpt": "ok",
                }
                for i in ids
                for n in range(2 if i % 10 == 0 else 1)
            ]
            await _copy(conn, "job", jobs)
            await _copy(conn, "transition", transitions)
            await _copy(conn, "event", events)
            await _copy(conn, "attempt", attempts)
            for key, n in (
                ("jobs", jobs),
                ("transitions", transitions),
                ("events", events),
                ("attempts", attempts),
            ):
                rows[key] += len(n)
            say(f"[prune]   {rows['jobs']:,} old jobs loaded")
        now = datetime.now(UTC).replace(tzinfo=None)
        live_jobs = [
            _job(old + i, f"live-{i}", finished=None, now=now, interval=interval) for i in range(1, live + 1)
        ]
        await _copy(conn, "job", live_jobs)
        for table in ("job", "event"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
        await conn.execute("ANALYZE")
        # The load's dirty pages written now, not while polling is measured (a superuser's right).
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
        # Due from now on, spread over one interval: the relay starts right after this.
        await conn.execute(
            "UPDATE job SET next_poll_at = (now() AT TIME ZONE 'UTC') + random() * make_interval(secs => $1)"
            " WHERE next_poll_at IS NOT NULL",
            interval,
        )
    finally:
        await conn.close()
    return {**rows, "seconds": round(time.perf_counter() - started, 1)}


# -- the measurement ----------------------------------------------------------------------------------


@dataclass
class Sampler:
    """Reads the live jobs every `interval` s; a changed `last_polled_at` is one poll, late by
    `last_polled_at` − the `next_poll_at` seen before it."""

    url: str
    interval: float = 0.2
    polls: list[tuple[float, float]] = field(default_factory=list)  # (monotonic when seen, lateness s)
    _seen: dict[int, tuple[datetime, datetime]] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        conn = None
        while not stop.is_set():
            try:
                conn = conn or await _connect(self.url)
                rows = await conn.fetch(
                    "SELECT id, next_poll_at, last_polled_at FROM job WHERE next_poll_at IS NOT NULL"
                )
            except DOWN:  # the server is restarting: connect again
                conn = None
                await asyncio.sleep(1)
                continue
            seen_at = time.monotonic()
            for job_id, due, polled in rows:
                before = self._seen.get(job_id)
                if before is not None and polled > before[1]:
                    self.polls.append((seen_at, (polled - before[0]).total_seconds()))
                self._seen[job_id] = (due, polled)
            await asyncio.sleep(self.interval)
        if conn is not None:
            await conn.close()

    def window(self, start: float, end: float) -> dict[str, Any]:
        late = [max(0.0, lateness) for at, lateness in self.polls if start <= at < end]
        seconds = end - start
        return {
            "seconds": round(seconds, 1),
            "polls": len(late),
            "polls_per_s": round(len(late) / seconds, 1) if seconds > 0 else None,
            "p50_ms": ms(percentile(late, 50)),
            "p99_ms": ms(percentile(late, 99)),
            "max_ms": ms(max(late, default=None)),
        }


async def measure(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy.exc import DBAPIError

    from app.config import load_settings
    from app.db import Database
    from app.runtime import Runtime
    from app.sandbox.serving import serve_in_background
    from app.sandbox.simulator import Simulator, SimulatorConfig

    sim = Simulator(SimulatorConfig(queue_seconds=1e9, process_seconds=1, api_key=API_KEY))
    async with serve_in_background(sim.app) as sim_url:
        settings = load_settings(
            **{k: v for k, v in BASE_ENV.items() if v is not None},
            DATABASE_URL=url,
            AKOOL_BASE_URL=sim_url,
            RELAY_POLL_INTERVAL_MIN=opts.interval,
            RELAY_POLL_INTERVAL_MAX=opts.interval,
            RELAY_AKOOL_RATE_LIMIT=100_000,
            RELAY_POLL_CONCURRENCY=opts.concurrency,
            RELAY_RETENTION_DAYS=90,
        )
        db = Database(settings.database_url, pool_size=settings.database_pool_size)
        relay = Runtime(settings, db)
        relay.start()
        relay.scheduler.remove_job("housekeeping")  # the pass below is the only one
        relay.events_waiting()
        relay.jobs_registered()
        stop = asyncio.Event()
        sampler = Sampler(url)
        sampling = asyncio.create_task(sampler.run(stop))
        try:
            say(
                f"[prune] polling {opts.live:,} live jobs: {opts.warmup:g} s warm-up, {opts.before:g} s before"
            )
            await asyncio.sleep(opts.warmup)
            lag = LagMonitor().start()
            t0 = time.monotonic()
            await asyncio.sleep(opts.before)
            t1 = time.monotonic()
            lag_before = await lag.stop()
            say("[prune] deleting (Runtime.prune: one housekeeping pass)")
            lag = LagMonitor().start()
            progress = asyncio.create_task(_progress(url, t1))
            rows_before = await _rows(url)
            interruptions = 0
            while True:
                try:
                    await relay.prune()
                    break
                except (DBAPIError, *DOWN) as exc:  # the server restarted: the next pass goes on
                    interruptions += 1
                    say(f"[prune] the pass was interrupted ({type(exc).__name__}); starting another")
                    await asyncio.sleep(2)
            t2 = time.monotonic()
            progress.cancel()
            # Counted from the rows: an interrupted pass deleted some too, and does not say how many.
            rows_after = await _rows(url)
            deleted = {k: rows_before[k] - rows_after[k] for k in rows_before}
            lag_during = await lag.stop()
            await asyncio.sleep(1.0)  # polls written just before the end are seen by the next sample
        finally:
            stop.set()
            await sampling
            await relay.stop()
            await db.dispose()
    overlaps = sum(sim.overlaps.values())
    return {
        "before": {**sampler.window(t0, t1), "lag_max_ms": lag_before["lag_max_ms"]},
        "during": {**sampler.window(t1, t2), "lag_max_ms": lag_during["lag_max_ms"]},
        "deleted": deleted,
        "prune_s": round(t2 - t1, 1),
        "jobs_per_s": round(deleted["jobs"] / (t2 - t1)) if t2 > t1 else None,
        "overlapping_polls": overlaps,
        "interruptions": interruptions,  # passes cut short by a server restart (the figures are disturbed)
    }


async def _rows(url: str) -> dict[str, int]:
    """Finished jobs, transitions, events and attempts in the database."""
    counts = {}
    for key, sql in (
        ("jobs", "SELECT count(*) FROM job WHERE next_poll_at IS NULL"),
        ("transitions", "SELECT count(*) FROM transition"),
        ("events", "SELECT count(*) FROM event"),
        ("attempts", "SELECT count(*) FROM attempt"),
    ):
        [(counts[key],)] = await _fetch(url, sql)
    return {k: int(v) for k, v in counts.items()}


async def _progress(url: str, since: float, every: float = 30.0) -> None:
    """Say every `every` s how many finished jobs are left (the pass does not report as it goes)."""
    while True:
        await asyncio.sleep(every)
        try:
            [(left,)] = await _fetch(url, "SELECT count(*) FROM job WHERE next_poll_at IS NULL")
        except DOWN:
            continue
        say(f"[prune]   {time.monotonic() - since:5.0f} s: {left:,} finished jobs left")


async def _check_after(url: str, live: int) -> dict[str, int]:
    """What is left: the live jobs only, and counts equal to the rows."""
    conn = await _connect(url)
    try:
        left = await conn.fetchval("SELECT count(*) FROM job")
        counted = await conn.fetchval("SELECT coalesce(sum(n), 0) FROM status_count WHERE kind = 'job'")
        events = await conn.fetchval("SELECT count(*) FROM event")
        counted_events = await conn.fetchval(
            "SELECT coalesce(sum(n), 0) FROM status_count WHERE kind = 'event'"
        )
    finally:
        await conn.close()
    return {
        "jobs_left": int(left),
        "live_jobs": live,
        "job_count_matches": int(left == counted),
        "event_count_matches": int(events == counted_events),
    }


def table(results: dict[str, Any]) -> str:
    b, d = results["before"], results["during"]
    lines = [
        "| window | seconds | polls/s | due → polled p50 | p99 | max | loop lag max |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, w in (("before the deletion", b), ("during the deletion", d)):
        lines.append(
            f"| {name} | {w['seconds']} | {w['polls_per_s']} | {w['p50_ms']} ms | {w['p99_ms']} ms | "
            f"{w['max_ms']} ms | {w['lag_max_ms']} ms |"
        )
    x = results["deleted"]
    lines.append("")
    lines.append(
        f"deleted {x['jobs']:,} jobs ({x['transitions']:,} transitions, {x['events']:,} events, "
        f"{x['attempts']:,} attempts) in {results['prune_s']} s: {results['jobs_per_s']:,} jobs/s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prune", description=__doc__.splitlines()[0])
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    p.add_argument("--jobs", type=int, default=200_000, help="finished jobs to delete")
    p.add_argument("--live", type=int, default=1000, help="live jobs polled meanwhile")
    p.add_argument("--concurrency", type=int, default=32, help="RELAY_POLL_CONCURRENCY")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between two polls of a live job")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of polling before `before` opens")
    p.add_argument("--before", type=float, default=60.0, help="seconds of polling alone, measured")
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    opts = p.parse_args(argv)

    import sqlalchemy as sa

    from app.migrate import upgrade_to_head

    if sa.make_url(opts.database_url).get_backend_name() not in ("postgresql", "postgres"):
        p.error("this measurement is for PostgreSQL")
    name = f"akool_relay_bench_prune_{uuid.uuid4().hex[:6]}"
    url = sa.make_url(opts.database_url).set(database=name).render_as_string(hide_password=False)

    async def admin(sql: str) -> None:
        conn = await _connect(opts.database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        upgrade_to_head(url)
        say(f"[prune] {name}: loading {opts.jobs:,} finished jobs and {opts.live:,} live ones")
        loaded = asyncio.run(load(url, opts.jobs, opts.live, opts.interval))
        say(f"[prune]   loaded in {loaded['seconds']} s: {loaded}")
        results = asyncio.run(measure(url, opts))
        results["loaded"] = loaded
        results["after"] = asyncio.run(_check_after(url, opts.live))
        results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for _ in range(30):  # the server may be restarting (another run's test): wait for it
            try:
                asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except (OSError, asyncpg.PostgresError):
                time.sleep(2)
    print(table(results))
    print(
        f"left: {results['after']['jobs_left']:,} jobs (the {opts.live:,} live ones); counts equal the rows: "
        f"{bool(results['after']['job_count_matches'] and results['after']['event_count_matches'])}; "
        f"overlapping polls: {results['overlapping_polls']}; passes interrupted by a server restart: "
        f"{results['interruptions']}; load average at the end: {results['load_average']}"
    )
    if opts.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
