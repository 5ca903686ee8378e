"""What every measurement shares: scratch databases, bulk inserts, helper processes, clocks, figures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

API_KEY = "bench-key"
WEBHOOK_SECRET = (
    "whsec_" + "YmVuY2htYXJrLXNlY3JldC1ub3QtcmVhbC0wMDAwMA=="
)  # a benchmark value, not a real secret
NOWHERE = "http://127.0.0.1:9/hook"  # callback URL of jobs that never finish (never called)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Settings every benchmark relay starts from; each measurement adds its own.
BASE_ENV: dict[str, Any] = {
    "AKOOL_API_KEY": API_KEY,
    "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "RELAY_ALLOW_PRIVATE_CALLBACKS": True,  # everything is on 127.0.0.1
    "RELAY_API_TOKENS": None,
}


def say(message: str) -> None:
    """Progress, on stderr so it never mixes with a child's result line."""
    print(message, file=sys.stderr, flush=True)


# -- figures --------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB, from /proc."""
    figures: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                figures[key] = round(int(value.split()[0]) / 1024, 1)
    return figures


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class LagMonitor:
    """A 10 ms ticker in the event loop; lag = how late each tick woke up."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self.at: list[float] = []  # when each tick woke, seconds since start()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LagMonitor:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.lags.append(max(0.0, now - before - self.interval))
            self.at.append(now - started)

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        worst = max(range(len(self.lags)), key=self.lags.__getitem__, default=None)
        return {
            "lag_max_ms": ms(max(self.lags, default=0.0)),
            "lag_max_at_s": None if worst is None else round(self.at[worst], 2),
            "lag_p99_ms": ms(percentile(self.lags, 99)),
            "lag_ticks": len(self.lags),
            "lag_ticks_over_100ms": sum(lag > 0.1 for lag in self.lags),
        }


# -- the machine ----------------------------------------------------------------------------------


def loop_speed() -> float:
    """CPU nanoseconds per iteration of a trivial Python loop: how fast this machine runs Python
    (about 20-40 on a current desktop); compare runs on different machines with it."""
    started = time.process_time()
    total = 0
    for i in range(2_000_000):
        total += i
    return round((time.process_time() - started) / 2_000_000 * 1e9, 1)


def machine_info(database: str) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_total = round(int(first.split()[1]) / 1024 / 1024, 1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=False)
    packages = {}
    for name in (
        "akool-relay",
        "fastapi",
        "uvicorn",
        "httpx",
        "sqlalchemy",
        "aiosqlite",
        "asyncpg",
        "apscheduler",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu_model,
        "memory_gb": mem_total,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python_loop_ns": loop_speed(),
        "git_commit": commit + ("-dirty" if dirty.stdout.strip() else ""),
        "database": database,
        "packages": packages,
    }


# -- helper processes -----------------------------------------------------------------------------


class Proc:
    """A helper server (`python -m benchmarks.procs KIND …`) that prints `READY <url>` once it listens."""

    def __init__(self, kind: str, *args: str, log_dir: Path, env: dict[str, Any] | None = None) -> None:
        self.kind = kind
        argv = [sys.executable, "-m", "benchmarks.procs", kind, *args]
        if env is not None:
            argv += ["--env", json.dumps(env)]
        self.log_path = log_dir / f"{kind}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.pid = self.proc.pid
        self.url = self._wait_ready(timeout=60)

    def _wait_ready(self, timeout: float) -> str:
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().strip()
        finally:
            timer.cancel()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{self.kind} did not start: {self.log_tail()}")
        return line.split(" ", 1)[1]

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop_with_result(self) -> dict[str, Any]:
        """Stop a helper that prints `RESULT <json>` when terminated (the ticker); returns it."""
        self.stop()
        assert self.proc.stdout is not None
        for line in self.proc.stdout.read().splitlines():
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[len("RESULT ") :])
                return result
        return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def run_child(name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (`python -m benchmarks.child`); returns its figures."""
    argv = [sys.executable, "-m", "benchmarks.child", name, json.dumps(args)]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"child {name} exited {done.returncode} without a result")
