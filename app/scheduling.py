"""Where a job's next poll goes, and how urgent it is when due polls outnumber the budget (SPEC §5).

Pure: no I/O, no clock, no database. `states.apply_decision()` is the caller; it keeps the samples,
the estimate and the priority on the job row, and `store/polls.claim_due()` reads the priority.

**Prediction** (`predict_finish`). While a job processes, each answered poll adds a (time, progress)
sample; the last `SAMPLES_KEPT` are kept. The first is an anchor when the poll before saw the job
not yet processing: progress 0 at the middle of the two polls (`start_of_processing`), since Akool's
progress starts from 0 when processing starts. The estimate is the least-squares line of progress
over time through the samples: the job ends where the line reaches 100 (never before the newest
sample). Least squares, not the last two samples, because Akool's progress is uneven (steps, ±4
noise, stalls). So one poll in processing, with the anchor, already gives an estimate: under a
saturated budget there are about four polls per job in all, and waiting for three samples left most
jobs without one (measured with `python -m benchmarks --only detection`). No estimate (None) when
progress says nothing:
- fewer than `MIN_SAMPLES` samples (the anchor counts);
- flat, absent or too little: a rise of less than `MIN_RISE` points from the oldest kept sample to
  the newest (two samples ±4 apart differ by up to 8 from noise alone);
- going back: the newest sample is below the oldest;
- jumping back and forth: the steps back add up to more than half the net rise.

**Placement** (`plan_next_poll`). With an estimate, the next poll goes at the expected finish, jittered
by at most ±MIN/2 (so it lands within ±MIN of the estimate). When the budget has room (`spare`: the
last claim found fewer due jobs than it could take), polls cost nothing scarce, so they look ahead:
at half the remaining time, and every MIN once within the last `LOOKAHEAD_SHARE` of the estimated
processing time; an early end is then seen at once. Without an estimate, the backoff of app/retry.py
(×1.5 while nothing changes, up to MAX). A status change with no estimate yet, or a poll a push asked
for that found the job unfinished, brings the next poll to MIN; a progress change alone does not (it
is what the estimate is made of). Either way the wait is clamped into [MIN, MAX], jitter included.

**Priority** (`poll_class`, `claim_at`). When due polls outnumber the budget, a claim takes first the
jobs Akool pushed about (their own batch), then by `claim_at` = `next_poll_at` + class × MAX/2:
class 0 (`FINISH_PASSED`): the poll is placed at or after the expected finish — when it is due, the
expected finish has passed; class 1 (`RUNNING`): processing, the finish unknown or further away;
class 2 (`QUEUED`): pending or queueing. So a running job waits behind finish-passed jobs that fell due
up to MAX/2 later, a queued one behind those up to MAX later, and no longer: priority grows with the
time overdue and nothing is starved. MAX/2 and not MAX between classes: with MAX, a job still seen
queueing waited up to 2 × MAX behind running ones, long enough for a short job to end meanwhile;
`python -m benchmarks --only detection --detection-full`, no-progress workload: 5.68–5.76 s mean
with MAX, 4.93–5.20 s with MAX/2, the saturated one 2.24–2.32 s and 2.39–2.40 s.

**Fair shares** (`Turns`, SPEC §8). After the pushed jobs, tenants take turns, the least served
first, each turn going to the tenant's own first job by claim_at. So a tenant with 100,000 overdue
jobs does not hold back another's 20, and each spends its share on its own likeliest news; with one
tenant nothing changes.
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
MIN_SAMPLES = 2  # the start-of-processing anchor and one poll's progress are enough
MIN_RISE = 10  # progress points the kept samples must rise by, first to last (more than noise makes)
MAX_BACK_SHARE = 0.5  # steps back may add up to this share of the net rise (noise), no more
LOOKAHEAD = 0.5  # with budget to spare: the next poll at this share of the remaining time
LOOKAHEAD_SHARE = 0.2  # … and every MIN within this share of the estimated processing time

Sample = Sequence[float]  # [Unix seconds, progress 0..100], as kept in the job's JSON column


def add_sample(samples: Sequence[Sample] | None, at: float, progress: int) -> list[list[float]]:
    """`samples` with (at, progress) appended, the newest `SAMPLES_KEPT` kept. A sample not later than
    the newest kept one replaces nothing and is dropped (time must move forward for a slope)."""
    kept = [[float(t), float(p)] for t, p in samples or ()]
    if kept and at <= kept[-1][0]:
        return kept[-SAMPLES_KEPT:]
    kept.append([float(at), float(progress)])
    return kept[-SAMPLES_KEPT:]


def start_of_processing(previous_poll: float | None, now: float) -> list[list[float]] | None:
    """The anchor sample of a job seen processing now, when the poll at `previous_poll` saw it not yet
    processing: progress 0 halfway between (None without an earlier poll)."""
    if previous_poll is None or previous_poll >= now:
        return None
    return [[(previous_poll + now) / 2, 0.0]]


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
    spare: bool = False,
    estimated_from: float | None = None,
    rng: random.Random | None = None,
) -> PollPlan:
    """The wait before the next poll of an unfinished job.

    `now` and `expected_finish` in one time base (seconds); `interval`: the row's current backoff
    interval; `reset`: the status changed, or a push asked for this poll (next one at the minimum);
    `spare`: the budget has room (look ahead of the estimate); `estimated_from`: the time of the
    oldest sample the estimate was made of.
    """
    if reset:
        planned = minimum
        fraction = JITTER
    elif expected_finish is not None and spare:
        remaining = expected_finish - now
        span = expected_finish - (now if estimated_from is None else estimated_from)
        planned = minimum if remaining <= LOOKAHEAD_SHARE * span else min(maximum, LOOKAHEAD * remaining)
        planned = max(minimum, planned)
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
    """The claim order key: due time + class × MAX/2 (a later class waits at most that long)."""
    return next_poll_at + timedelta(seconds=int(klass) * maximum / 2)


@dataclass(frozen=True)
class DueJob:
    """A due job as the claim sees it: whose it is, its class and its claim order key."""

    id: int
    tenant_id: int
    klass: int
    claim_at: datetime


class Turns:
    """Whose turn it is when tenants have polls due (SPEC §8): tenants take turns, the one served
    least first, and each turn goes to that tenant's own first job in claim order. So a tenant with
    100,000 due jobs (however overdue) does not hold back another's 20, and each tenant's share is
    spent on its own likeliest news. With one tenant the order is claim_at's.

    One claim takes only the budget's next moment (a few jobs), so turns must outlast a claim: each
    tenant's count of jobs claimed is kept across claims (in this replica; every replica shares out
    its own claims). Only tenants with jobs due now are counted. One that comes back, or comes new,
    starts level with the least served of the others: credit is not saved up while idle.
    """

    def __init__(self) -> None:
        self.served: dict[int, int] = {}

    def order(self, due: Sequence[DueJob], n: int) -> list[int]:
        """The ids of the first `n` of `due` to claim."""
        queues: dict[int, list[DueJob]] = {}
        for job in sorted(due, key=lambda d: (d.claim_at, d.id)):
            queues.setdefault(job.tenant_id, []).append(job)
        floor = min((self.served[t] for t in queues if t in self.served), default=0)
        self.served = {t: self.served.get(t, floor) for t in queues}
        picked: list[int] = []
        while len(picked) < n and queues:
            tenant = min(queues, key=lambda t: (self.served[t], queues[t][0].claim_at, queues[t][0].id))
            picked.append(queues[tenant].pop(0).id)
            self.served[tenant] += 1
            if not queues[tenant]:
                del queues[tenant]
        return picked
