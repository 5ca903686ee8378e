"""`--profile`: sample a helper process with py-spy during a measurement window and summarise it.

py-spy is optional (`pip install py-spy`, root or ptrace permission needed). It writes collapsed
stacks ("frame;frame;frame count"); the summary lists where the samples were spent: the functions
on the stack most often (inclusive), and the leaves (self time), each as a share of all samples.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def executable() -> str | None:
    """py-spy on PATH, or installed in this interpreter's environment (a venv not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def available() -> bool:
    return executable() is not None


class Sampler:
    """py-spy record on `pid` for `seconds`, started now; `summary()` after it ends."""

    def __init__(self, pid: int, seconds: float, out: Path, *, native: bool = False) -> None:
        self.out = out
        argv = [
            executable() or "py-spy",
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
        ]
        argv += ["--format", "raw", "--rate", "200", "--output", str(out), "--nonblocking", "--threads"]
        if native:
            argv.append("--native")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def summary(self, top: int = 15) -> dict[str, Any]:
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.out.exists():
            return {"error": "py-spy wrote nothing (permissions?)"}
        return summarise(self.out.read_text(), top)


def _short(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match["file"]
    for marker in ("site-packages/", "/app/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "/app/":
                file = "app/" + file
            break
    return f"{match['func']} ({file})"


IDLE_LEAVES = ("EpollSelector.select (", "select (", "poll (")


def summarise(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Shares of the event-loop thread's busy samples, and how busy the other threads were.

    Inclusive: % of busy event-loop samples with the function anywhere on the stack (where time goes,
    app and library); self: % where it is the innermost frame. Waiting in epoll is idle, not busy.
    """
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    others: Counter[str] = Counter()
    busy = idle = other_total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        main = "MainThread" in parts[0]
        frames = [_short(f) for f in parts if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if not main:
            other_total += count
            others[frames[-1]] += count
            continue
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        busy += count
        for name in set(frames):
            inclusive[name] += count
        leaf[frames[-1]] += count

    def share(counter: Counter[str], total: int, skip_outer: bool = False) -> list[list[Any]]:
        if not total:
            return []
        items = [(k, v) for k, v in counter.most_common() if not (skip_outer and v >= 0.97 * total)]
        return [[name, round(100 * n / total, 1)] for name, n in items[:top]]

    return {
        "event_loop_busy_samples": busy,
        "event_loop_idle_samples": idle,
        "other_thread_samples": other_total,  # aiosqlite's worker threads run the SQLite calls
        "inclusive_pct": share(inclusive, busy, skip_outer=True),
        "self_pct": share(leaf, busy),
        "other_threads_self_pct": share(others, other_total),
    }
