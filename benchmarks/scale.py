"""Scale of tracked jobs: N unfinished jobs all due at once, the relay against the naive design.

- relay: N rows bulk-inserted (due now), then a cold start in a fresh process: Database + Runtime,
  started exactly as the app's lifespan does (`relay.start()`, wake the pumps), polling a simulator
  subprocess whose jobs never finish. Runs until every job was polled once or the window ends.
- naive: one APScheduler 3 interval job per id (memory job store, AsyncIOScheduler, defaults:
  misfire_grace_time=1, coalesce, max_instances=1), each a trivial coroutine (no I/O at all, so
  everything measured is the scheduler's own cost); all due at the same instant.

Both report RSS (VmRSS now, VmHWM peak; baseline after imports), the worst lag of a 10 ms ticker, and
whether any due run was lost.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    API_KEY,
    BASE_ENV,
    LagMonitor,
    Proc,
    ms,
    proc_status,
    run_child,
    say,
)
from benchmarks.data import Databases, insert_jobs, job_counts

NAIVE_INTERVAL = 5.0  # RELAY_POLL_INTERVAL_MIN's default: what a naive design would poll at


def run(dbs: Databases, opts: Any, log_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"window_s": opts.scale_window, "sizes": {}}
    for n in opts.scale_sizes:
        say(f"[scale] {n:,} jobs: bulk insert")
        url = dbs.fresh(f"scale{n}")
        inserted = asyncio.run(insert_jobs(url, n, prefix=f"s{n}-"))
        say(f"[scale]   inserted in {inserted:.1f} s; relay cold start (window {opts.scale_window:g} s)")
        sim_args = ["--queue-seconds", "1e9", "--process-seconds", "1", "--api-key", API_KEY]
        with Proc("simulator", *sim_args, log_dir=log_dir) as sim:
            args = {"url": url, "sim_url": sim.url, "jobs": n, "window": opts.scale_window}
            args["concurrency"] = opts.concurrency
            with Proc("ticker", log_dir=log_dir) as control:
                relay = run_child("scale-relay", args, timeout=opts.scale_window + 900)
                relay["control"] = control.stop_with_result()
            from benchmarks.poll import sim_stats

            stats = sim_stats(sim)
            relay["simulator_ids_seen"] = stats["ids_seen"]
            relay["overlapping_polls"] = stats["overlap_total"]
        relay["insert_s"] = round(inserted, 1)
        say(
            f"[scale]   relay: RSS peak {relay['rss_peak_mb']} MB, lag max {relay['lag_max_ms']} ms "
            f"(machine alone {relay['control'].get('lag_max_ms')} ms), "
            f"{relay['polled_once']:,}/{n:,} polled; naive design next"
        )
        with Proc("ticker", log_dir=log_dir) as control:
            naive = run_child("scale-naive", {"jobs": n, "interval": NAIVE_INTERVAL}, timeout=900)
            naive["control"] = control.stop_with_result()
        say(
            f"[scale]   naive: RSS peak {naive['rss_peak_mb']} MB, lag max {naive['lag_max_ms']} ms, "
            f"ran {naive['executed']:,} of {naive['expected_runs']:,} due runs ({naive['missed']:,} reported missed)"
        )
        results["sizes"][str(n)] = {"relay": relay, "naive_apscheduler": naive}
    return results


def _polls(relay: Any) -> int:
    return int(
        sum(s.value for m in relay.metrics.polls.collect() for s in m.samples if s.name.endswith("_total"))
    )


async def relay_child(args: dict[str, Any]) -> dict[str, Any]:
    from app.config import load_settings
    from app.db import Database
    from app.runtime import Runtime

    n, window = int(args["jobs"]), float(args["window"])
    baseline = proc_status()
    settings = load_settings(
        **{k: v for k, v in BASE_ENV.items() if v is not None},
        DATABASE_URL=args["url"],
        AKOOL_BASE_URL=args["sim_url"],
        RELAY_POLL_CONCURRENCY=args["concurrency"],
        RELAY_AKOOL_RATE_LIMIT=1_000_000,
    )
    constructed = time.perf_counter()
    db = Database(settings.database_url, pool_size=settings.database_pool_size)
    relay = Runtime(settings, db)  # before the ticks (and before uvicorn would serve)
    construct_s = time.perf_counter() - constructed
    lag = LagMonitor().start()  # the ticks: from the scheduler's start on
    started = time.monotonic()
    first_claim: dict[str, float] = {}
    pump = relay.poller.pump
    claim = getattr(pump, "_claim", None)
    if claim is not None:  # instrumentation only: note when the first claimed batch came back

        async def timed_claim(k: int) -> Any:
            rows = await claim(k)
            if rows and "s" not in first_claim:
                first_claim.update(s=time.monotonic() - started, rows=len(rows))
            return rows

        pump._claim = timed_claim
    relay.start()  # as app.main's lifespan: scheduler ticks, then wake both pumps
    relay.events_waiting()
    relay.jobs_registered()
    all_polled_s = None
    next_report = started + 10
    while (elapsed := time.monotonic() - started) < window or window <= 0:
        await asyncio.sleep(0.25)
        polls = _polls(relay)
        if polls >= n and (await job_counts(args["url"]))["polled"] >= n:
            all_polled_s = time.monotonic() - started
            break
        if time.monotonic() >= next_report:
            next_report += 10
            print(f"    {elapsed:5.0f} s: {polls:,} polls", file=sys.stderr, flush=True)
    run_s = time.monotonic() - started
    polls = _polls(relay)
    lag_figures = await lag.stop()  # the ticks only: shutting down is not part of the figure
    memory = proc_status()
    await relay.stop()
    await db.dispose()
    counts = await job_counts(args["url"])
    polled = counts["polled"]
    # Oldest due first: no job may be polled twice while another has not been polled at all.
    passed_over = max(0, polls - polled) if polled < n else 0
    vanished = n - polled - counts["unpolled_due"]  # neither polled nor still waiting its turn
    return {
        "jobs": n,
        "rss_baseline_mb": baseline.get("VmRSS"),
        "rss_end_mb": memory.get("VmRSS"),
        "rss_peak_mb": memory.get("VmHWM"),
        **lag_figures,
        "construct_ms": ms(construct_s),  # Database() + Runtime(): blocks the loop once, before any tick
        "first_claim_ms": ms(first_claim.get("s")),
        "first_claim_rows": first_claim.get("rows"),
        "run_s": round(run_s, 1),
        "polls": polls,
        "polls_per_s": round(polls / run_s, 1),
        "polled_once": polled,
        "all_polled_s": None if all_polled_s is None else round(all_polled_s, 1),
        "projected_all_polled_s": round(n / (polls / run_s), 1) if polls else None,
        "unpolled_still_due": counts["unpolled_due"],
        "repolled_while_others_waited": passed_over,
        "lost_due_polls": vanished + passed_over,
    }


async def naive_child(args: dict[str, Any]) -> dict[str, Any]:
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    n, interval = int(args["jobs"]), float(args["interval"])
    # Runs still queued when the scheduler shuts down are cancelled, each with an ERROR log line.
    logging.getLogger("apscheduler").setLevel(logging.CRITICAL)
    baseline = proc_status()
    runs = [0] * n
    first_round: dict[str, float] = {}
    done_once = 0
    events: Counter[str] = Counter()

    async def poll(i: int) -> None:  # a trivial coroutine: no I/O, so the scheduler's cost is all there is
        nonlocal done_once
        runs[i] += 1
        if runs[i] == 1:
            done_once += 1
            if done_once == n:
                first_round["s"] = time.monotonic()
        await asyncio.sleep(0)

    def on_event(event: JobEvent) -> None:
        events["missed" if event.code == EVENT_JOB_MISSED else "max_instances"] += 1

    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.add_listener(on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    scheduler.start(paused=True)  # cold start: load every tracked id, then let them all fall due
    add_started = time.monotonic()
    # Every job's first run is the same instant D, far enough ahead that adding them all fits.
    probe = _add_rate(scheduler, poll, min(n, 2000))
    due_at = datetime.now(UTC) + timedelta(seconds=2 + 3 * n / probe)
    for lo in range(0, n, 1000):
        for i in range(lo, min(n, lo + 1000)):
            scheduler.add_job(
                poll, "interval", seconds=interval, args=[i], id=f"j{i:07d}", next_run_time=due_at
            )
        await asyncio.sleep(0)  # yield between chunks: the lag measured is the scheduler's, not ours
    add_s = time.monotonic() - add_started
    after_add = proc_status()
    lag_before = (due_at - datetime.now(UTC)).total_seconds()
    if lag_before < 0:
        raise RuntimeError("adding the jobs took longer than planned; the due instant has passed")
    scheduler.resume()
    await asyncio.sleep(max(0.0, lag_before - 0.5))
    lag = LagMonitor().start()  # the ticks: from just before everything falls due
    due_mono = time.monotonic() + 0.5
    window = 2 * interval + 2  # three rounds: D, D+interval, D+2*interval
    await asyncio.sleep(0.5 + window)
    lag_figures = await lag.stop()
    memory = proc_status()
    # Runs already handed to the event loop still get to run (or be reported missed): drain them.
    scheduler.shutdown(wait=False)
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if pending:
        await asyncio.wait(pending, timeout=120)
    expected_per_job = int(window // interval) + 1
    return {
        "jobs": n,
        "interval_s": interval,
        "window_s": window,
        "rss_baseline_mb": baseline.get("VmRSS"),
        "rss_after_add_mb": after_add.get("VmRSS"),
        "rss_end_mb": memory.get("VmRSS"),
        "rss_peak_mb": memory.get("VmHWM"),
        "add_jobs_s": round(add_s, 1),
        **lag_figures,
        "first_round_s": round(first_round["s"] - due_mono, 2) if "s" in first_round else None,
        "ran_once": done_once,
        "expected_runs": n * expected_per_job,
        "executed": sum(runs),
        "lost_runs": max(0, n * expected_per_job - sum(runs)),
        "missed": events["missed"],
        "skipped_max_instances": events["max_instances"],
        "never_ran": n - done_once,
    }


def _add_rate(scheduler: Any, func: Any, k: int) -> float:
    """Jobs added per second (measured on throwaway jobs, then removed)."""
    far = datetime.now(UTC) + timedelta(days=1)
    started = time.perf_counter()
    for i in range(k):
        scheduler.add_job(func, "interval", seconds=60, args=[0], id=f"probe{i:07d}", next_run_time=far)
    rate = k / (time.perf_counter() - started)
    scheduler.remove_all_jobs()
    return rate
