"""Lifelike Akool jobs for the simulator: a fixed, seeded model of how long a job takes and what
progress it shows on the way (issue 11, item 4).

The model is fixed here, in writing, so that a predictor is measured against it and cannot be tuned
to a moving target: change it only on purpose, with the benchmark figures that depend on it.

Every id's timeline is a pure function of (seed, id): the same seed and id give the same timeline in
any process, in any order, at any time (a benchmark rebuilds it outside the simulator). The draws, in
this order, from `random.Random` seeded with the first 8 bytes of sha256(f"{seed}/{id}"):

1. **Kind** (one draw, always made): `lifelike` and `jumpy` and `noprogress` workloads give every id
   their kind; `mixed` gives 70 % lifelike, 15 % jumpy, 15 % no progress.
2. **Duration** T (seconds, from the first poll to the end): from the workload's distribution,
   `uniform(lo, hi)` (default uniform(20, 50)); a single number is a fixed duration.
3. **Queueing** takes a share of T drawn uniformly from 10–30 % (video_status 1, progress 0 or, for
   a silent job, absent). The rest, P = T − queueing, is processing (video_status 2); then the job
   ends (3, progress 100; or 4 for a `fail…` id).
4. **Progress during processing**, by kind:
   - **lifelike**: n progress steps, n uniform in 8–20. The processing is n + 1 chunks of work, each
     of weight uniform(0.5, 1.5) (uneven steps); step k shows the work done by the end of chunk k,
     ×100, plus noise uniform(−4, +4), rounded, then kept within [previous shown value, 99]: it never
     goes backwards and never shows 100 before the end. A chunk takes time proportional to its work
     times a speed uniform(0.6, 1.4). One job in three stalls: 1–2 of its chunks (never the first)
     get an extra pause of 10–25 % of the un-stalled processing time each, during which the
     progress stays flat. The chunk times are then scaled to fill P exactly. Progress is 0 from the
     start of processing until the first step.
   - **jumpy**: m jumps, m uniform in 1–3: the shown progress goes 0 → round(100·j/(m+1)) for
     j = 1..m → 100 (e.g. 0 → 50 → 100, or 0 → 25 → 50 → 75 → 100), jump j at the fraction
     j/(m+1) + uniform(−0.1, +0.1) of the processing (kept increasing, within (0, 1)).
   - **noprogress**: half the ids (a draw < 0.5) never show a `progress` field while queueing or
     processing ("silent"); the others show 0 throughout ("zero"). Either way progress is 100 at the
     end, like every other kind.

A script (`Simulator.script(…, queue_seconds=, process_seconds=)`) still overrides an id's durations;
its progress steps then keep their fractions of the (scripted) processing time.

`Workload.scaled(f)` divides every duration by f and keeps every shape (fractions, values): the ×10
time-scaled benchmark runs the same jobs ten times faster.

Spec text (the simulator's `--workload`): `KIND[:seed=N][:duration=uniform(LO,HI)|SECONDS]`, e.g.
`lifelike:seed=1:duration=uniform(20,50)`; `Workload.parse` reads it and `Workload.spec` writes it.

Without a workload the simulator keeps its short linear timeline (queue 1 s, then 3 s of progress
rising linearly; SimulatorConfig), which the demo, the tests and the container check rely on.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["lifelike", "jumpy", "noprogress", "mixed"]
KINDS: tuple[Kind, ...] = ("lifelike", "jumpy", "noprogress", "mixed")
Shape = Literal["lifelike", "jumpy", "silent", "zero"]  # what one id does

QUEUE_SHARE = (0.10, 0.30)
STEPS = (8, 20)
NOISE = 4.0
WORK_WEIGHT = (0.5, 1.5)
SPEED = (0.6, 1.4)
STALL_CHANCE = 1 / 3
STALLS = (1, 2)
STALL_SHARE = (0.10, 0.25)
JUMPS = (1, 3)
JUMP_WOBBLE = 0.1
MIXED_SHARES = (("lifelike", 0.70), ("jumpy", 0.15), ("noprogress", 0.15))


@dataclass(frozen=True, slots=True)
class Duration:
    """Seconds from a job's first poll to its end, uniform in [lo, hi] (lo == hi: fixed)."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not 0 <= self.lo <= self.hi:
            raise ValueError(f"a duration needs 0 <= lo <= hi, not {self.lo}, {self.hi}")

    def draw(self, rng: random.Random) -> float:
        u = rng.random()  # always one draw, so a fixed duration keeps the rest of the sequence
        return self.lo + u * (self.hi - self.lo)

    def scaled(self, factor: float) -> Duration:
        return Duration(self.lo / factor, self.hi / factor)

    def spec(self) -> str:
        return f"{self.lo:g}" if self.lo == self.hi else f"uniform({self.lo:g},{self.hi:g})"

    @classmethod
    def parse(cls, text: str) -> Duration:
        text = text.replace(" ", "")
        if m := re.fullmatch(r"uniform\(([^,()]+),([^,()]+)\)", text):
            return cls(float(m[1]), float(m[2]))
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"a duration is uniform(LO,HI) or SECONDS, not {text!r}") from None
        return cls(seconds, seconds)


def uniform(lo: float, hi: float) -> Duration:
    return Duration(float(lo), float(hi))


@dataclass(frozen=True, slots=True)
class Timeline:
    """One id's life: queueing, then processing, with the progress it shows from each step on."""

    shape: Shape
    queue_seconds: float
    process_seconds: float
    # (fraction of the processing elapsed, progress shown from then on), fractions increasing in (0, 1)
    steps: tuple[tuple[float, int], ...] = ()
    stalls: int = 0  # lifelike chunks with an extra pause

    @property
    def total_seconds(self) -> float:
        return self.queue_seconds + self.process_seconds

    def progress_at(self, fraction: float) -> int | None:
        """Progress shown `fraction` of the way through processing (≤ 0: while queueing); None: no
        progress field at all. 100 only at the end, which the simulator shows itself."""
        if self.shape == "silent":
            return None
        shown = 0
        for at, progress in self.steps:
            if at > fraction:
                break
            shown = progress
        return shown

    def scaled(self, factor: float) -> Timeline:
        return Timeline(
            self.shape, self.queue_seconds / factor, self.process_seconds / factor, self.steps, self.stalls
        )


@dataclass(frozen=True, slots=True)
class Workload:
    """Which jobs the simulator plays: a kind (see the module docstring), a seed, a duration law."""

    kind: Kind = "lifelike"
    seed: int = 0
    duration: Duration = field(default_factory=lambda: uniform(20, 50))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"workload kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    def timeline(self, video_model_id: str) -> Timeline:
        return _timeline(self, video_model_id)

    def scaled(self, factor: float) -> Workload:
        """The same jobs `factor` times faster (every duration divided, every shape kept)."""
        return Workload(self.kind, self.seed, self.duration.scaled(factor))

    def spec(self) -> str:
        return f"{self.kind}:seed={self.seed}:duration={self.duration.spec()}"

    @classmethod
    def parse(cls, text: str) -> Workload:
        kind, *options = text.strip().split(":")
        seed, duration = 0, uniform(20, 50)
        for option in options:
            key, sep, value = option.partition("=")
            if key.strip() == "seed" and sep:
                seed = int(value)
            elif key.strip() == "duration" and sep:
                duration = Duration.parse(value)
            else:
                raise ValueError(f"unknown workload option {option!r} (seed=N, duration=uniform(LO,HI))")
        if kind not in KINDS:
            raise ValueError(f"workload kind must be one of {', '.join(KINDS)}, not {kind!r}")
        return cls(kind, seed, duration)


def _rng(seed: int, video_model_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{video_model_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _timeline(workload: Workload, vid: str) -> Timeline:
    rng = _rng(workload.seed, vid)
    pick = rng.random()
    kind = _mixed_kind(pick) if workload.kind == "mixed" else workload.kind
    total = workload.duration.draw(rng)
    queue = total * rng.uniform(*QUEUE_SHARE)
    process = total - queue
    if kind == "lifelike":
        steps, stalls = _lifelike(rng)
        return Timeline("lifelike", queue, process, steps, stalls)
    if kind == "jumpy":
        return Timeline("jumpy", queue, process, _jumpy(rng))
    return Timeline("silent" if rng.random() < 0.5 else "zero", queue, process)


def _mixed_kind(pick: float) -> str:
    bound = 0.0
    for kind, share in MIXED_SHARES:
        bound += share
        if pick < bound:
            return kind
    return MIXED_SHARES[-1][0]


def _lifelike(rng: random.Random) -> tuple[tuple[tuple[float, int], ...], int]:
    n = rng.randint(*STEPS)
    work = [rng.uniform(*WORK_WEIGHT) for _ in range(n + 1)]
    times = [w * rng.uniform(*SPEED) for w in work]
    stalled: list[int] = []
    if rng.random() < STALL_CHANCE:
        base = sum(times)
        stalled = rng.sample(range(1, n + 1), rng.randint(*STALLS))
        for i in stalled:
            times[i] += base * rng.uniform(*STALL_SHARE)
    total_work, total_time = sum(work), sum(times)
    steps: list[tuple[float, int]] = []
    done = elapsed = 0.0
    shown = 0
    for k in range(n):  # step k+1 ends chunk k; the last chunk ends with the job
        done += work[k]
        elapsed += times[k]
        noisy = round(100 * done / total_work + rng.uniform(-NOISE, NOISE))
        shown = min(99, max(shown, noisy))
        steps.append((elapsed / total_time, shown))
    return tuple(steps), len(stalled)


def _jumpy(rng: random.Random) -> tuple[tuple[float, int], ...]:
    m = rng.randint(*JUMPS)
    steps: list[tuple[float, int]] = []
    last = 0.0
    for j in range(1, m + 1):
        at = j / (m + 1) + rng.uniform(-JUMP_WOBBLE, JUMP_WOBBLE)
        at = min(max(at, last + 0.01), 0.99)
        steps.append((at, round(100 * j / (m + 1))))
        last = at
    return tuple(steps)


__all__ = ["KINDS", "Duration", "Kind", "Timeline", "Workload", "uniform"]
