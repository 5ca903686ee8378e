"""Where a job's next poll goes, and how urgent it is when due polls outnumber the budget (SPEC §5).

Pure: no I/O, no clock, no database. `states.apply_decision()` is the caller; it keeps the samples,
the estimate and the priority on the job row, and `store/polls.claim_due()` reads the priority.

**Prediction** (`predict_finish`). While a job processes, each answered poll adds a (time, progress)
sample; the last `SAMPLES_KEPT` are kept. The estimate is the least-squares line of progress over
time through them: the job ends where the line reaches 100 (never before the newest sample). Least
squares, not the last two samples, because Akool's progress is uneven (steps, ±4 noise, stalls).
No estimate (None) when progress says nothing:
- fewer than `MIN_SAMPLES` samples;
- flat or absent: no rise from the oldest kept sample to the newest;
- going back: the newest sample is below the oldest;
- jumping back and forth: the steps back add up to more than half the net rise;
- too little to go on: the slope's standard error is more than `MAX_SLOPE_ERROR` of the slope, the
  noise taken as at least `NOISE_FLOOR` (±4 points, uniform) however smooth the samples look. So
  three samples must span about 22 points, eight about 17, before they are believed.

**Placement** (`plan_next_poll`). With an estimate, the next poll goes at the expected finish, jittered
by at most ±MIN/2 (so it lands within ±MIN of the estimate); without one, the backoff of app/retry.py
(×1.5 while nothing changes, up to MAX). A status change, or a poll a push asked for that found the
job unfinished, brings the next poll to MIN; a progress change alone does not (it is what the
estimate is made of). Either way the wait is clamped into [MIN, MAX], jitter included.

**Priority** (`poll_class`, `claim_at`). When due polls outnumber the budget, a claim takes first the
jobs Akool pushed about (their own batch), then by `claim_at` = `next_poll_at` + class × MAX:
class 0 (`FINISH_PASSED`): the poll is placed at or after the expected finish — when it is due, the
expected finish has passed; class 1 (`RUNNING`): processing, the finish unknown or further away;
class 2 (`QUEUED`): pending or queueing. So a running job waits behind finish-passed jobs that fell due
up to MAX later, a queued one behind those up to 2 × MAX later, and no longer: priority grows with
the time overdue and nothing is starved.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum
from itertools import pairwise

from app.models import JobStatus
from app.retry import JITTER, jittered, next_poll_interval

SAMPLES_KEPT = 8  # (time, progress) samples kept on the job row
MIN_SAMPLES = 3
MIN_RISE = 1  # progress points the kept samples must rise by, first to last (else flat)
MAX_BACK_SHARE = 0.5  # steps back may add up to this share of the net rise (noise), no more
MAX_SLOPE_ERROR = 0.15  # the slope's standard error, as a share of the slope, at most
NOISE_FLOOR = 4 / math.sqrt(3)  # progress points: the noise assumed at least (± 4, uniform)

Sample = Sequence[float]  # [Unix seconds, progress 0..100], as kept in the job's JSON column


def add_sample(samples: Sequence[Sample] | None, at: float, progress: int) -> list[list[float]]:
    """`samples` with (at, progress) appended, the newest `SAMPLES_KEPT` kept. A sample not later than
    the newest kept one replaces nothing and is dropped (time must move forward for a slope)."""
    kept = [[float(t), float(p)] for t, p in samples or ()]
    if kept and at <= kept[-1][0]:
        return kept[-SAMPLES_KEPT:]
    kept.append([float(at), float(progress)])
    return kept[-SAMPLES_KEPT:]


def predict_finish(samples: Sequence[Sample] | None) -> float | None:
    """When the job reaches 100 %, in the samples' time (Unix seconds); None when progress says nothing."""
    if samples is None or len(samples) < MIN_SAMPLES:
        return None
    times = [float(s[0]) for s in samples]
    progress = [float(s[1]) for s in samples]
    rise = progress[-1] - progress[0]
    if rise < MIN_RISE:  # flat, absent or going back
        return None
    back = sum(max(0.0, a - b) for a, b in pairwise(progress))
    if back > MAX_BACK_SHARE * rise:  # jumping back and forth
        return None
    n = len(samples)
    t_mean = math.fsum(times) / n
    p_mean = math.fsum(progress) / n
    sxx = math.fsum((t - t_mean) ** 2 for t in times)
    if sxx <= 0:
        return None
    slope = math.fsum((t - t_mean) * (p - p_mean) for t, p in zip(times, progress, strict=True)) / sxx
    if slope <= 0:
        return None
    residuals = math.fsum(
        (p - (p_mean + slope * (t - t_mean))) ** 2 for t, p in zip(times, progress, strict=True)
    )
    variance = max(NOISE_FLOOR**2, residuals / (n - 2))  # n ≥ 3
    if math.sqrt(variance / sxx) > MAX_SLOPE_ERROR * slope:  # too little to go on
        return None
    return max(times[-1], t_mean + (100.0 - p_mean) / slope)


@dataclass(frozen=True)
class PollPlan:
    wait: float  # seconds from this poll to the next, within [minimum, maximum], jitter included
    interval: float  # the backoff interval kept on the row: a later backoff grows from it


def plan_next_poll(
    now: float,
    expected_finish: float | None,
    interval: float,
    *,
    reset: bool,
    minimum: float,
    maximum: float,
    rng: random.Random | None = None,
) -> PollPlan:
    """The wait before the next poll of an unfinished job.

    `now` and `expected_finish` in one time base (seconds); `interval`: the row's current backoff
    interval; `reset`: the status changed, or a push asked for this poll (next one at the minimum).
    """
    if reset:
        planned = minimum
        fraction = JITTER
    elif expected_finish is not None:
        planned = min(maximum, max(minimum, expected_finish - now))
        # At most ±MIN/2 of jitter: the poll stays near the estimate, whatever the wait.
        fraction = min(JITTER, minimum / (2 * planned))
    else:
        planned = next_poll_interval(interval, changed=False, minimum=minimum, maximum=maximum)
        fraction = JITTER
    wait = min(maximum, max(minimum, jittered(planned, rng, fraction)))
    return PollPlan(wait=wait, interval=planned)


class PollClass(IntEnum):
    """How likely a due poll is to find an ending; lower goes first (after pushed jobs)."""

    FINISH_PASSED = 0
    RUNNING = 1
    QUEUED = 2


QUEUED_STATUSES = frozenset({JobStatus.PENDING, JobStatus.QUEUEING})


def poll_class(
    status: JobStatus, next_poll_at: datetime, expected_finish_at: datetime | None, minimum: float
) -> PollClass:
    """The class of a job's next poll. Finish-passed: the poll is placed at (or, within the jitter of
    ±MIN/2, just before) the expected finish, so by the time it is due the finish has passed."""
    if status in QUEUED_STATUSES:
        return PollClass.QUEUED
    if expected_finish_at is not None and expected_finish_at <= next_poll_at + timedelta(seconds=minimum):
        return PollClass.FINISH_PASSED
    return PollClass.RUNNING


def claim_at(next_poll_at: datetime, klass: PollClass, maximum: float) -> datetime:
    """The claim order key: due time + class × MAX (a later class waits at most that long)."""
    return next_poll_at + timedelta(seconds=int(klass) * maximum)
