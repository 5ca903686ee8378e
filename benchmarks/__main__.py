"""`python -m benchmarks [--only poll,scale,latency,api] …`: run, print the table, write the JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import api, detection, latency, poll, profiling, push, report, scale
from benchmarks.common import machine_info, say
from benchmarks.data import Databases

MEASUREMENTS: dict[str, Callable[[Databases, Any, Path], dict[str, Any]]] = {
    "poll": poll.run,
    "scale": scale.run,
    "latency": latency.run,
    "push": push.run,
    "detection": detection.run,
    "api": api.run,
}


def _sizes(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def _rates(text: str) -> list[str]:
    """Each a rate (polls/s, 0 = no limit) or a share of the measured capacity (`50%`)."""
    rates = [part.strip() for part in text.split(",") if part.strip()]
    try:
        values = [float(r.removesuffix("%")) for r in rates]
    except ValueError:
        raise argparse.ArgumentTypeError("expected rates ≥ 0 or shares like 50%, e.g. 50%,0") from None
    if not rates or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("expected rates ≥ 0 or shares like 50%, e.g. 50%,0")
    return rates


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MEASUREMENTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown measurement {unknown}; choose from {', '.join(MEASUREMENTS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure akool-relay against its ceiling and the naive design (see benchmarks/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL"),
        help="sqlite:///PATH or postgresql://…; a fresh database per measurement (PostgreSQL: scratch "
        "databases on that server, dropped afterwards). Default: temporary SQLite files",
    )
    p.add_argument("--only", type=_names, default=list(MEASUREMENTS), help="comma-separated subset")
    p.add_argument("--concurrency", type=int, default=32, help="poll concurrency and concurrent API workers")
    p.add_argument(
        "--poll-jobs", type=int, default=1000, help="never-finishing jobs the pollers cycle through"
    )
    p.add_argument("--poll-window", type=float, default=8.0, help="seconds counted per side, after a warm-up")
    p.add_argument(
        "--poll-rounds", type=int, default=4, help="interleaved windows the seconds are split into"
    )
    p.add_argument("--poll-warmup", type=float, default=3.0, help="seconds before the window opens")
    p.add_argument("--scale-sizes", type=_sizes, default=[10_000, 100_000], help="tracked jobs")
    p.add_argument(
        "--scale-window",
        type=float,
        default=15.0,
        help="seconds the relay runs after its cold start (it stops early once every job was polled); "
        "0 = until every job was polled once",
    )
    p.add_argument("--latency-jobs", type=int, default=1000)
    p.add_argument(
        "--latency-poll-interval", type=float, default=0.5, help="RELAY_POLL_INTERVAL_MIN (max ×4)"
    )
    p.add_argument(
        "--latency-rates",
        type=_rates,
        default=["50%", "0"],
        help="RELAY_AKOOL_RATE_LIMIT per run, comma-separated: polls/s, or a share of the poll capacity "
        "measured in the same run (`50%%`; measured first if `poll` is not in --only); the first is "
        "held to the target; 0: no limit",
    )
    p.add_argument("--latency-timeout", type=float, default=180.0, help="give up waiting for callbacks after")
    p.add_argument("--push-jobs", type=int, default=100, help="jobs of the push / poll-only delay runs")
    p.add_argument("--push-timeout", type=float, default=150.0, help="give up waiting for callbacks after")
    p.add_argument(
        "--detection-full",
        action="store_true",
        help="detection delay at full scale (jobs of 20–50 s; a few minutes) instead of 10× faster",
    )
    p.add_argument(
        "--detection-scale",
        type=float,
        default=10.0,
        help="how much faster the time-scaled detection run goes (durations and intervals ÷, rate ×); "
        "lower it when the table says BELOW BUDGET (the relay cannot poll at rate × scale here)",
    )
    p.add_argument(
        "--detection-seed", type=int, default=1, help="seed of the detection workloads (app.sandbox.workload)"
    )
    p.add_argument(
        "--api-jobs", type=int, default=100_000, help="jobs in the database for the API measurement"
    )
    p.add_argument("--api-finished-share", type=float, default=0.9, help="of those, completed with an event")
    p.add_argument(
        "--api-finished-over",
        type=float,
        default=86400.0,
        help="seconds over which the completed ones finished, the newest now (GET /stats charts the last hour)",
    )
    p.add_argument("--api-gets", type=int, default=200, help="sequential GET /jobs and GET /stats requests")
    p.add_argument("--api-batches", type=int, default=10, help="sequential POST /jobs/batch of 1,000")
    p.add_argument("--api-posts", type=int, default=1000, help="POST /jobs requests from the workers")
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/latest.json"), help="JSON; a .md beside it"
    )
    p.add_argument("--show", type=Path, default=None, help="print the table of an earlier JSON and exit")
    p.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help="sample the relay with py-spy during the poll window and write stacks + a summary here",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    console = Console()
    if opts.show is not None:
        report.show(json.loads(opts.show.read_text()), console)
        return 0
    if opts.profile_dir is not None:
        if not profiling.available():
            say("--profile-dir needs py-spy: pip install py-spy")
            return 2
        opts.profile_dir.mkdir(parents=True, exist_ok=True)
    dbs = Databases(opts.database_url)
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine_info(dbs.backend), "options": _options(opts)}
    say(f"akool-relay benchmarks: {', '.join(opts.only)} on {dbs.backend}; logs in {dbs.tmp}")
    failed = []
    try:
        for name in opts.only:
            t0 = time.monotonic()
            try:
                results[name] = MEASUREMENTS[name](dbs, opts, dbs.tmp)
            except Exception as exc:  # one broken measurement must not hide the others
                failed.append(name)
                results[name + "_error"] = f"{type(exc).__name__}: {exc}"
                say(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
            else:
                results[name]["wall_time_s"] = round(time.monotonic() - t0, 1)
                if name == "poll":  # the capacity the latency run's load is a share of
                    opts.measured_capacity = results[name]["relay"]["polls_per_s"]
    finally:
        dbs.cleanup(keep_logs=bool(failed))
        if failed:
            say(f"helper logs kept in {dbs.tmp}")
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_time_s"] = round(time.monotonic() - started, 1)
    results["targets"] = report.targets(results)
    md = report.write(results, opts.out)
    report.show(results, console)
    console.print(f"figures: {opts.out}  (README table: {md})")
    return 1 if failed else 0


def _options(opts: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}


if __name__ == "__main__":
    sys.exit(main())
