"""Completion → callback delay with Akool's push and without, at the default poll intervals.

`--push-jobs` (100) ids are scripted in the simulator to end 6–15 s after the relay first asks
(queueing 10–30 % of that). The delay is measured from the moment the simulator's job ends (its
first-seen time plus its scripted durations: `ended_at` in the simulator's stats) to the receiver
having the callback, both stamped with `time.time()` on this machine. Two runs in one invocation, each on a
fresh database with the defaults (RELAY_POLL_INTERVAL_MIN 5 s, MAX 60 s):
- **push**: the simulator pushes (signed, encrypted) to the relay's /akool/webhook on status 2, 3, 4;
- **poll only**: the same jobs, no push: the relay learns the end at its next poll.
Target with push, on loopback: p50 ≤ 300 ms, p99 ≤ 1.5 s.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import BASE_ENV, WEBHOOK_SECRET, Proc, ms, percentile, say
from benchmarks.data import Databases
from benchmarks.poll import sim_stats

PUSH_KEY = "bench-push-key-0123456789abcdef!"  # 32 bytes: the API key is Akool's client secret
CLIENT_ID = "bench-client"
PREFIX = "push-"


def run(dbs: Databases, opts: Any, log_dir: Path) -> dict[str, Any]:
    return {
        "with_push": _run(dbs, opts, log_dir, push=True),
        "poll_only": _run(dbs, opts, log_dir, push=False),
    }


def _run(dbs: Databases, opts: Any, log_dir: Path, *, push: bool) -> dict[str, Any]:
    n = opts.push_jobs
    name = "with push" if push else "poll only"
    say(f"[push] {n} jobs of 6–15 s, default poll intervals, {name}")
    url = dbs.fresh("push" if push else "nopush")
    rng = random.Random(11)
    ids = [f"{PREFIX}{i}" for i in range(n)]
    sim_args = ["--api-key", PUSH_KEY, "--client-id", CLIENT_ID]
    with (
        Proc("simulator", *sim_args, log_dir=log_dir) as sim,
        Proc("receiver", "--secret", WEBHOOK_SECRET, log_dir=log_dir) as rec,
        httpx.Client(timeout=60) as http,
    ):
        for vid in ids:
            total = rng.uniform(6, 15)
            queue = total * rng.uniform(0.1, 0.3)
            script = {"video_model_id": vid, "queue_seconds": queue, "process_seconds": total - queue}
            http.post(f"{sim.url}/_sim/script", json=script).raise_for_status()
        env = {
            **BASE_ENV,
            "AKOOL_API_KEY": PUSH_KEY,
            "AKOOL_CLIENT_ID": CLIENT_ID,
            "DATABASE_URL": url,
            "AKOOL_BASE_URL": sim.url,
        }
        with Proc("relay", env=env, log_dir=log_dir) as relay:
            if push:
                for vid in ids:
                    target = {"video_model_id": vid, "url": f"{relay.url}/akool/webhook"}
                    http.post(f"{sim.url}/_sim/push_to", json=target).raise_for_status()
            jobs = [{"video_model_id": vid, "callback_url": f"{rec.url}/hook"} for vid in ids]
            t0 = time.monotonic()
            http.post(f"{relay.url}/jobs/batch", json={"jobs": jobs}).raise_for_status()
            accepted: list[list[Any]] = []
            while time.monotonic() < t0 + opts.push_timeout:
                time.sleep(0.5)
                accepted = http.get(f"{rec.url}/_received").json()["accepted"]
                if len({row[2] for row in accepted if row[1] == "job.completed"}) >= n:
                    break
            run_s = time.monotonic() - t0
        stats = sim_stats(sim)
    ended: dict[str, float] = stats["ended_at"]
    arrived: dict[str, float] = {}
    for _, kind, vid, at in accepted:
        if kind == "job.completed" and vid not in arrived:
            arrived[vid] = at
    delays = [arrived[vid] - ended[vid] for vid in arrived if vid in ended]
    figures = {
        "jobs": n,
        "callbacks": len(arrived),
        "missing": n - len(arrived),
        "run_s": round(run_s, 1),
        "polls": stats["requests"],
        "polls_per_job": round(stats["requests"] / n, 2),
        "pushes_sent": stats.get("pushes_sent", 0),
        "p50_ms": ms(percentile(delays, 50)),
        "p99_ms": ms(percentile(delays, 99)),
        "max_ms": ms(max(delays, default=None)),
        "mean_ms": ms(sum(delays) / len(delays)) if delays else None,
    }
    say(
        f"[push]   {name}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms "
        f"({len(arrived)}/{n} callbacks, {figures['polls_per_job']} polls/job)"
    )
    return figures
