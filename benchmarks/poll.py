"""Poll throughput: polls/s the relay sustains at concurrency C, against a bare httpx loop (the ceiling).

Both talk to the same simulator subprocess, whose jobs never finish (queue_seconds=1e9), so every
answer is "still queueing" and every job is due again at once (RELAY_POLL_INTERVAL_MIN/MAX=1 ms).
Polls are counted where they land: the simulator's request log. Both pollers run at once but take
turns (the other is frozen with SIGSTOP): `--poll-rounds` windows each, interleaved, so a change in
the machine's load during the run hits both sides alike. CPU time is read from /proc for the measured
process alone (the relay, or the bare loop), so the simulator's work is never counted as the relay's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import profiling
from benchmarks.common import API_KEY, BASE_ENV, Proc, say
from benchmarks.data import Databases, insert_jobs

PREFIX = "poll-"


def sim_stats(sim: Proc) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{sim.url}/_sim/stats", timeout=30).json()
    return stats


class Tally:
    """Polls, seconds and CPU summed over the measured windows of one side."""

    def __init__(self) -> None:
        self.polls = 0
        self.seconds = self.cpu = self.sim_cpu = 0.0
        self.rounds: list[float] = []  # polls/s of each window

    def figures(self) -> dict[str, Any]:
        s = self.seconds or 1.0
        return {
            "polls": self.polls,
            "seconds": round(self.seconds, 2),
            "polls_per_s": round(self.polls / s, 1),
            "cpu_ms_per_poll": round(1000 * self.cpu / self.polls, 3) if self.polls else None,
            "cpu_utilisation": round(self.cpu / s, 2),  # 1.0 = one core busy all the time
            "simulator_cpu_utilisation": round(self.sim_cpu / s, 2),
            "polls_per_s_by_round": [round(r, 1) for r in self.rounds],
        }


def measure(sim: Proc, proc: Proc, window: float, tally: Tally) -> None:
    """Count polls at the simulator and CPU from /proc over one window of `window` seconds."""
    r0, c0, s0, t0 = sim_stats(sim)["requests"], proc.cpu_seconds(), sim.cpu_seconds(), time.monotonic()
    time.sleep(window)
    r1, c1, s1, t1 = sim_stats(sim)["requests"], proc.cpu_seconds(), sim.cpu_seconds(), time.monotonic()
    tally.polls += r1 - r0
    tally.seconds += t1 - t0
    tally.cpu += c1 - c0
    tally.sim_cpu += s1 - s0
    tally.rounds.append((r1 - r0) / (t1 - t0))


def _only(running: Proc, paused: Proc) -> None:
    """Let one side run and freeze the other (SIGSTOP), so the two never compete for the CPU."""
    os.kill(paused.pid, signal.SIGSTOP)
    os.kill(running.pid, signal.SIGCONT)


def run(dbs: Databases, opts: Any, log_dir: Path) -> dict[str, Any]:
    n, c, window, rounds = opts.poll_jobs, opts.concurrency, opts.poll_window, opts.poll_rounds
    say(f"[poll] {n} never-finishing jobs, concurrency {c}, {window:g} s per side in {rounds} rounds")
    url = dbs.fresh("poll")
    # Already queueing: every poll is the steady state ("nothing changed"), from the first one.
    asyncio.run(insert_jobs(url, n, prefix=PREFIX, seen=True))
    env = {
        **BASE_ENV,
        "DATABASE_URL": url,
        "RELAY_POLL_CONCURRENCY": c,
        "RELAY_AKOOL_RATE_LIMIT": 1_000_000,
        "RELAY_POLL_INTERVAL_MIN": 0.001,
        "RELAY_POLL_INTERVAL_MAX": 0.001,
    }
    sim_args = ["--queue-seconds", "1e9", "--process-seconds", "1", "--api-key", API_KEY]
    bare_args = ["--url", "", "--concurrency", str(c), "--prefix", "bare-", "--count", str(n)]
    tallies = {"relay": Tally(), "bare": Tally()}
    profiles: dict[str, Any] = {}
    with Proc("simulator", *sim_args, log_dir=log_dir) as sim:
        bare_args[1] = sim.url
        with (
            Proc("relay", env={**env, "AKOOL_BASE_URL": sim.url}, log_dir=log_dir) as relay,
            Proc("bare-poller", *bare_args, "--api-key", API_KEY, log_dir=log_dir) as bare,
        ):
            sides = {"relay": relay, "bare": bare}
            try:
                for name, other in (("bare", "relay"), ("relay", "bare")):  # warm each up alone
                    _only(sides[name], sides[other])
                    time.sleep(opts.poll_warmup)
                # Interleaved windows: a change in the machine's load hits both sides alike.
                for r in range(rounds):
                    for name, other in (("relay", "bare"), ("bare", "relay")):
                        _only(sides[name], sides[other])
                        time.sleep(0.5)  # settle: timers that fired while frozen
                        sampler = None
                        if opts.profile_dir is not None and r == 0:
                            out = opts.profile_dir / f"poll-{name}.txt"
                            sampler = profiling.Sampler(sides[name].pid, window / rounds, out)
                        measure(sim, sides[name], window / rounds, tallies[name])
                        if sampler is not None:
                            profiles[name] = sampler.summary()
            finally:
                for proc in (relay, bare):
                    os.kill(proc.pid, signal.SIGCONT)
            overlaps = sim_stats(sim)["overlap_total"]
            rss = _rss(relay.pid)
    relay_figures, bare_figures = tallies["relay"].figures(), tallies["bare"].figures()
    relay_figures.update(overlapping_polls=overlaps, rss_mb=rss)
    for name, figures in (("relay", relay_figures), ("bare", bare_figures)):
        if name in profiles:
            figures["profile"] = profiles[name]
    ratio = relay_figures["polls_per_s"] / bare_figures["polls_per_s"] if bare_figures["polls_per_s"] else 0
    say(
        f"[poll]   relay {relay_figures['polls_per_s']} polls/s, bare {bare_figures['polls_per_s']} "
        f"polls/s: ratio {ratio:.2f}"
    )
    return {
        "jobs": n,
        "concurrency": c,
        "window_s": window,
        "rounds": rounds,
        "relay": relay_figures,
        "bare_httpx": bare_figures,
        "ratio": round(ratio, 3),
        # Less sensitive to other load on the machine: polls per CPU-second, relay against bare.
        "cpu_efficiency_ratio": round(bare_figures["cpu_ms_per_poll"] / relay_figures["cpu_ms_per_poll"], 3)
        if relay_figures["cpu_ms_per_poll"] and bare_figures["cpu_ms_per_poll"]
        else None,
    }


def _rss(pid: int) -> float | None:
    from benchmarks.common import proc_status

    return proc_status(pid).get("VmRSS")
