"""Callback latency: from the simulator sending the answer that shows a job ended to the receiver having
the callback. Both stamp `time.time()` on the same machine (simulator: `terminal_sent_at`, the first
terminal answer per id; receiver: `Received.at`, on arrival), each in its own process.

N jobs are registered in one `POST /jobs/batch`; the simulator is scripted so they finish spread over
the first ten seconds after the relay first asks (queue 0–2 s, process 0.5–7.5 s). The relay polls with
small intervals, so it is busy polling the others while each callback goes out: the figure includes
waiting behind that work, which is what a client sees.

How busy is set by RELAY_AKOOL_RATE_LIMIT, once per `--latency-rates` value. The first (default: half
the poll capacity measured in the same run by the `poll` measurement) is the one held to the target,
so the load means the same on a slower machine: a fixed 100 polls/s was about 75% of the capacity of
a machine half as fast as the one the README figures came from, and there the target was missed by
queueing alone. 0 lifts the limit, so the relay polls as fast as its one core allows and every
callback also waits behind a saturated event loop (reported beside it, as the figure for overload).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import profiling
from benchmarks.common import API_KEY, BASE_ENV, WEBHOOK_SECRET, Proc, ms, percentile, say
from benchmarks.data import Databases
from benchmarks.poll import sim_stats

PREFIX = "lat-"


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50_ms": ms(percentile(values, 50)),
        "p90_ms": ms(percentile(values, 90)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values, default=None)),
        "mean_ms": ms(sum(values) / len(values)) if values else None,
    }


def run(dbs: Databases, opts: Any, log_dir: Path) -> dict[str, Any]:
    capacity = None
    if any(r.endswith("%") for r in opts.latency_rates):
        capacity = getattr(opts, "measured_capacity", None)
        if capacity is None:
            from benchmarks import poll

            say("[latency] measuring the poll capacity first (a share of it was asked for)")
            capacity = poll.run(dbs, opts, log_dir)["relay"]["polls_per_s"]
    runs = []
    for i, spec in enumerate(opts.latency_rates):
        share = float(spec.removesuffix("%")) / 100 if spec.endswith("%") else None
        rate = round(capacity * share, 1) if share is not None and capacity else float(spec)
        figures = _at_rate(dbs, opts, log_dir, rate, i)
        figures["capacity_polls_per_s"] = capacity
        figures["load_share"] = round(rate / capacity, 3) if capacity and rate else None
        runs.append(figures)
    first, *others = runs
    return {**first, "other_loads": others} if others else first


def _at_rate(dbs: Databases, opts: Any, log_dir: Path, rate: float, run_no: int) -> dict[str, Any]:
    n, interval = opts.latency_jobs, opts.latency_poll_interval
    limit = f"rate limit {rate:g} polls/s" if rate else "no rate limit"
    say(f"[latency] {n} jobs finishing within 10 s, poll interval {interval:g}–{interval * 4:g} s, {limit}")
    url = dbs.fresh(f"latency_{run_no}")
    rng = random.Random(5)
    ids = [f"{PREFIX}{i}" for i in range(n)]
    sim_args = ["--queue-seconds", "1", "--process-seconds", "3", "--api-key", API_KEY]
    with (
        Proc("simulator", *sim_args, log_dir=log_dir) as sim,
        Proc("receiver", "--secret", WEBHOOK_SECRET, log_dir=log_dir) as rec,
        httpx.Client(timeout=60) as http,
    ):
        for vid in ids:
            script = {"video_model_id": vid, "queue_seconds": rng.uniform(0, 2)}
            script["process_seconds"] = rng.uniform(0.5, 7.5)
            http.post(f"{sim.url}/_sim/script", json=script).raise_for_status()
        env = {
            **BASE_ENV,
            "DATABASE_URL": url,
            "AKOOL_BASE_URL": sim.url,
            "RELAY_POLL_CONCURRENCY": opts.concurrency,
            "RELAY_AKOOL_RATE_LIMIT": rate or 1_000_000,
            "RELAY_POLL_INTERVAL_MIN": interval,
            "RELAY_POLL_INTERVAL_MAX": interval * 4,
        }
        with Proc("relay", env=env, log_dir=log_dir) as relay:
            hook = f"{rec.url}/hook"
            jobs = [{"video_model_id": vid, "callback_url": hook} for vid in ids]
            cpu0, t0 = relay.cpu_seconds(), time.monotonic()
            for lo in range(0, n, 1000):
                http.post(f"{relay.url}/jobs/batch", json={"jobs": jobs[lo : lo + 1000]}).raise_for_status()
            deadline = t0 + opts.latency_timeout
            sampler = None
            if opts.profile_dir is not None:
                out = opts.profile_dir / f"latency-{run_no}-relay.txt"
                sampler = profiling.Sampler(relay.pid, 8, out)
            accepted: list[list[Any]] = []
            while time.monotonic() < deadline:
                time.sleep(1.0)
                accepted = http.get(f"{rec.url}/_received").json()["accepted"]
                if len({row[2] for row in accepted if row[1] == "job.completed"}) >= n:
                    break
            run_s = time.monotonic() - t0
            cpu = relay.cpu_seconds() - cpu0
            profile = sampler.summary() if sampler is not None else None
        stats = sim_stats(sim)
    sent: dict[str, float] = stats["terminal_sent_at"]
    arrived: dict[str, float] = {}
    for _, kind, vid, at in accepted:
        if kind == "job.completed" and vid not in arrived:
            arrived[vid] = at
    latencies = [arrived[vid] - sent[vid] for vid in arrived if vid in sent]
    figures = {
        "jobs": n,
        "poll_interval_min_s": interval,
        "rate_limit": rate or None,
        "callbacks": len(arrived),
        "missing": n - len(arrived),
        "run_s": round(run_s, 1),
        "polls": stats["requests"],
        "polls_per_s": round(stats["requests"] / run_s, 1),
        "relay_cpu_utilisation": round(cpu / run_s, 2),
        **summary(latencies),
    }
    if profile is not None:
        figures["profile"] = profile
    say(
        f"[latency]   p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms "
        f"({len(arrived)}/{n} callbacks in {run_s:.0f} s)"
    )
    return figures
