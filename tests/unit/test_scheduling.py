"""Prediction, placement and priority of polls (app.scheduling, and how apply_decision uses them).

Pure, with numbers: progress is made the way Akool reports it (an integer 0..100), the time in seconds.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.models import POLL_CLASSES, Job, JobStatus
from app.scheduling import (
    SAMPLES_KEPT,
    DueJob,
    PollClass,
    Turns,
    add_sample,
    claim_at,
    plan_next_poll,
    poll_class,
    predict_finish,
    start_of_processing,
)
from app.states import Answered, JobView, apply_decision, decide
from tests.support.env import relay_settings

MIN, MAX = 1.0, 30.0
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def linear(duration: float, times: Sequence[float]) -> list[list[float]]:
    """Samples of a job that processes from t=0 to t=duration at a constant rate (integer progress)."""
    samples: list[list[float]] = []
    for t in times:
        samples = add_sample(samples, t, min(99, int(100 * t / duration)))
    return samples


def remaining_error(samples: Sequence[Sequence[float]], duration: float) -> float | None:
    """(predicted remaining − true remaining) / true remaining, seen from the newest sample."""
    finish = predict_finish(samples)
    if finish is None:
        return None
    now = samples[-1][0]
    return (finish - now) / (duration - now) - 1


# -- prediction ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "times"),
    [
        (100, (10, 20, 35)),
        (30, (3, 6, 12)),
        (45, (4.5, 9, 18)),
        (20, (2, 5, 9)),
        (600, (60, 150, 240)),
        (50, (10, 11.5, 23)),
    ],
)
def test_linear_progress_predicts_the_remaining_time_within_10_percent_after_3_samples(
    duration: float, times: tuple[float, ...]
) -> None:
    error = remaining_error(linear(duration, times), duration)
    assert error is not None, "three samples that rise steadily are believed"
    assert abs(error) <= 0.10, error


def test_any_3_linear_samples_spanning_25_points_are_believed_and_within_10_percent() -> None:
    checked = 0
    for duration in range(20, 700, 9):
        for first in (0.0, 0.05, 0.2, 0.4):
            for gaps in ((0.1, 0.15), (0.15, 0.15), (0.1, 0.3), (0.25, 0.05), (0.2, 0.2)):
                times = [first * duration]
                times += [times[0] + gaps[0] * duration, times[0] + (gaps[0] + gaps[1]) * duration]
                samples = linear(duration, times)
                if samples[-1][1] - samples[0][1] < 25 or times[-1] > 0.8 * duration:
                    continue
                error = remaining_error(samples, duration)
                assert error is not None and abs(error) <= 0.10, (duration, times, samples, error)
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize(("duration", "every"), [(100, 5), (100, 10), (40, 2), (300, 30)])
def test_noisy_progress_predicts_the_remaining_time_within_25_percent(duration: float, every: float) -> None:
    """Linear progress ±4 points of uniform noise at each sample (seeded), polled every `every` s from
    the start of processing at t=0, which the relay anchors at progress 0 (seen queueing just before);
    every estimate made while at least a fifth of the job remains is scored."""
    errors: list[float] = []
    made = asked = 0
    for seed in range(200):
        rng = random.Random(seed)
        samples = start_of_processing(-every, every)  # queueing at -every, processing at +every
        assert samples == [[0.0, 0.0]]
        t = float(every)
        while t < 0.8 * duration:
            progress = round(100 * t / duration + rng.uniform(-4, 4))
            samples = add_sample(samples, t, max(0, min(99, progress)))
            error = remaining_error(samples, duration)
            asked += 1
            if error is not None:
                made += 1
                errors.append(abs(error))
            t += every
    assert made >= asked / 2, "most of the way an estimate is made"
    within = sum(e <= 0.25 for e in errors) / len(errors)
    assert within >= 0.95, f"{within:.1%} of estimates within ±25 %"
    assert statistics.median(errors) <= 0.10


def test_a_noisy_estimate_gets_closer_to_the_end_as_samples_come() -> None:
    """Seconds between the estimate and the true end (100 s), by how far the job has come."""
    by_stage: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for seed in range(200):
        rng = random.Random(seed)
        samples: list[list[float]] = []
        for t in range(0, 90, 5):
            samples = add_sample(samples, t, max(0, round(t + rng.uniform(-4, 4))))
            finish = predict_finish(samples)
            if finish is not None:
                by_stage[0 if t < 40 else 1 if t < 65 else 2].append(abs(finish - 100))
    medians = [statistics.median(errors) for errors in by_stage.values()]
    assert medians == sorted(medians, reverse=True) and medians[-1] < medians[0] / 2, medians


@pytest.mark.parametrize(
    "samples",
    [
        pytest.param(None, id="absent"),
        pytest.param([], id="no samples"),
        pytest.param([[0, 10]], id="one sample"),
        pytest.param([[0, 10], [5, 18]], id="two samples within the noise"),
        pytest.param([[0, 50], [5, 50], [10, 50], [15, 50]], id="flat"),
        pytest.param([[0, 0], [5, 0], [10, 0], [15, 0]], id="flat at zero"),
        pytest.param([[0, 60], [5, 50], [10, 40]], id="going back"),
        pytest.param([[0, 20], [5, 40], [10, 60], [15, 10]], id="dropped back below the start"),
        pytest.param([[0, 10], [5, 60], [10, 15], [15, 70], [20, 20], [25, 75]], id="back and forth"),
        pytest.param([[0, 10], [5, 11], [10, 12]], id="too little rise to go on"),
        pytest.param([[0, 0], [1, 3], [2, 8]], id="three early samples within the noise"),
    ],
)
def test_progress_that_says_nothing_gives_no_estimate(samples: list[list[float]] | None) -> None:
    assert predict_finish(samples) is None


def test_a_stall_moves_the_estimate_later() -> None:
    steady = linear(100, (10, 20, 30, 40))
    assert predict_finish(steady) == pytest.approx(100)
    assert predict_finish([*steady, [50, 40]]) == pytest.approx(120)
    assert predict_finish([*steady, [50, 40], [60, 40]]) == pytest.approx(35 + 70 / (1100 / 1750))


def test_the_start_of_processing_anchors_the_first_estimate() -> None:
    """Queueing at 10 s, processing at 20 s: it started about 15 s, at progress 0. With one more
    sample that is enough for an estimate (a job processing 100 s from 15 s, seen at 45 s: 30 %)."""
    anchor = start_of_processing(10.0, 20.0)
    assert anchor == [[15.0, 0.0]]
    assert start_of_processing(None, 20.0) is None  # first seen processing: no start to anchor
    samples = add_sample(anchor, 45.0, 30)
    assert predict_finish(samples) == pytest.approx(115.0)
    assert predict_finish(add_sample(anchor, 45.0, 8)) is None  # within the noise of 0


def test_the_estimate_is_never_before_the_newest_sample() -> None:
    # The line through these reaches 100 at about 40.6 s; the job was still running at 41 s.
    samples = [[0.0, 0.0], [10.0, 25.0], [20.0, 50.0], [30.0, 75.0], [40.0, 99.0], [41.0, 99.0]]
    assert predict_finish(samples) == 41.0


def test_samples_keep_the_newest_few_and_time_moves_forward() -> None:
    samples: list[list[float]] = []
    for t in range(20):
        samples = add_sample(samples, t, t)
    assert len(samples) == SAMPLES_KEPT and samples[-1] == [19.0, 19.0]
    assert add_sample(samples, 19, 25) == samples  # the same instant again: nothing new


# -- placement ----------------------------------------------------------------------------------------


def test_with_budget_to_spare_polls_look_ahead_of_the_estimate() -> None:
    """An estimate made over 100 s (from t=940) says 1040; now is 1000."""
    rng = random.Random(1)

    def wait(expected: float, spare: bool) -> float:
        return plan_next_poll(
            1000.0,
            expected,
            5.0,
            reset=False,
            minimum=MIN,
            maximum=MAX,
            spare=spare,
            estimated_from=940.0,
            rng=rng,
        ).wait

    assert 20 * 0.9 <= wait(1040.0, spare=True) <= 20 * 1.1  # half the remaining 40 s
    assert MIN <= wait(1015.0, spare=True) <= MIN * 1.1  # within the last fifth of the span: every MIN
    assert abs(wait(1015.0, spare=False) - 15) <= MIN / 2  # no room: at the estimate


@pytest.mark.parametrize("ahead", [MIN, 1.5, 4.0, 12.0, 29.0, MAX])
def test_the_next_poll_lands_within_min_of_the_estimate(ahead: float) -> None:
    rng = random.Random(7)
    waits = [
        plan_next_poll(1000.0, 1000.0 + ahead, 5.0, reset=False, minimum=MIN, maximum=MAX, rng=rng).wait
        for _ in range(2000)
    ]
    assert all(abs(w - ahead) <= MIN for w in waits), (min(waits), max(waits))
    assert all(MIN <= w <= MAX for w in waits)
    assert len({round(w, 6) for w in waits}) > 1 or ahead == MIN  # still jittered


def test_an_estimate_beyond_the_maximum_or_past_is_kept_within_min_and_max() -> None:
    rng = random.Random(3)
    for ahead in (-50.0, -1.0, 0.0, 0.5, 31.0, 400.0):
        for _ in range(500):
            plan = plan_next_poll(1000.0, 1000.0 + ahead, 5.0, reset=False, minimum=MIN, maximum=MAX, rng=rng)
            assert MIN <= plan.wait <= MAX
            if ahead <= 0:
                assert plan.wait <= MIN * 1.5  # finish passed: poll again soon
            if ahead > MAX:
                assert plan.wait >= MAX - MIN


def test_without_an_estimate_the_poll_backs_off_and_a_progress_change_does_not_reset_it() -> None:
    rng = random.Random(5)
    interval = MIN
    for expected in (1.5, 2.25, 3.375, 5.0625, 7.59375):
        plan = plan_next_poll(0.0, None, interval, reset=False, minimum=MIN, maximum=MAX, rng=rng)
        assert plan.interval == pytest.approx(expected)
        assert expected * 0.9 - 1e-9 <= plan.wait <= expected * 1.1 + 1e-9
        interval = plan.interval
    capped = plan_next_poll(0.0, None, 25.0, reset=False, minimum=MIN, maximum=MAX, rng=rng)
    assert capped.interval == MAX and MAX * 0.9 <= capped.wait <= MAX


def test_a_status_change_or_a_push_resets_the_wait_to_the_minimum() -> None:
    rng = random.Random(9)
    for expected_finish in (None, 20.0):
        plan = plan_next_poll(0.0, expected_finish, 25.0, reset=True, minimum=MIN, maximum=MAX, rng=rng)
        assert plan.interval == MIN and MIN <= plan.wait <= MIN * 1.1


# -- priority -----------------------------------------------------------------------------------------


def test_the_schema_has_an_index_for_every_poll_class() -> None:
    assert tuple(int(k) for k in PollClass) == POLL_CLASSES


def _due(job_id: int, tenant: int, klass: PollClass, seconds: float) -> DueJob:
    return DueJob(job_id, tenant, int(klass), T0 + timedelta(seconds=seconds))


def test_with_one_tenant_the_fair_order_is_the_claim_at_order() -> None:
    due = [_due(i, 1, PollClass(i % 3), s) for i, s in enumerate([5, 1, 9, 3, 7, 2, 8])]
    by_key = [d.id for d in sorted(due, key=lambda d: (d.claim_at, d.id))]
    assert Turns().order(due, 7) == by_key
    assert Turns().order(due, 3) == by_key[:3]


def test_tenants_take_turns_however_many_one_has_due() -> None:
    # Tenant 1 has ten running jobs due since long ago, tenant 2 two that fell due later.
    due = [_due(i, 1, PollClass.RUNNING, i) for i in range(10)]
    due += [_due(100, 2, PollClass.RUNNING, 50), _due(101, 2, PollClass.RUNNING, 51)]
    assert Turns().order(due, 4) == [0, 100, 1, 101]
    assert Turns().order(due, 6) == [0, 100, 1, 101, 2, 3]


def test_turns_outlast_a_claim_and_a_newcomer_starts_level() -> None:
    turns = Turns()
    big = [_due(i, 1, PollClass.RUNNING, i) for i in range(100)]
    assert [turns.order(big[k:], 1) for k in range(3)] == [[0], [1], [2]]
    # Tenant 2 comes with jobs due later: one job per claim, the tenants alternate from now on.
    small = [_due(100 + i, 2, PollClass.RUNNING, 50 + i) for i in range(10)]
    picked = [0, 1, 2]
    for _ in range(6):
        ids = turns.order([d for d in big + small if d.id not in picked], 1)
        picked += ids
    assert picked[3:] == [3, 100, 4, 101, 5, 102]


def test_a_tenants_turn_goes_to_its_own_first_job_in_claim_order() -> None:
    # Running: tenant 1 due at 0, 1 and 2 s, tenant 2 at 10 s; finish passed: tenant 1 at 0.5 s.
    # Tenant 2's one job goes second; tenant 1's go in their claim order.
    due = [
        _due(1, 1, PollClass.RUNNING, 0),
        _due(2, 1, PollClass.RUNNING, 1),
        _due(3, 1, PollClass.RUNNING, 2),
    ]
    due += [_due(4, 2, PollClass.RUNNING, 10), _due(5, 1, PollClass.FINISH_PASSED, 0.5)]
    assert Turns().order(due, 5) == [1, 4, 5, 2, 3]


def test_poll_classes_and_their_claim_order_keys() -> None:
    due = T0
    assert poll_class(JobStatus.PENDING, due, None, MIN) == PollClass.QUEUED
    assert poll_class(JobStatus.QUEUEING, due, None, MIN) == PollClass.QUEUED
    assert poll_class(JobStatus.PROCESSING, due, None, MIN) == PollClass.RUNNING
    assert poll_class(JobStatus.PROCESSING, due, due + timedelta(seconds=10), MIN) == PollClass.RUNNING
    assert poll_class(JobStatus.PROCESSING, due, due, MIN) == PollClass.FINISH_PASSED
    assert poll_class(JobStatus.PROCESSING, due, due - timedelta(seconds=5), MIN) == PollClass.FINISH_PASSED
    # Placed within the jitter (±MIN/2) before the estimate: due when the finish has passed.
    assert poll_class(JobStatus.PROCESSING, due, due + timedelta(seconds=0.5), MIN) == PollClass.FINISH_PASSED
    assert claim_at(due, PollClass.FINISH_PASSED, MAX) == due
    assert claim_at(due, PollClass.RUNNING, MAX) == due + timedelta(seconds=MAX / 2)
    assert claim_at(due, PollClass.QUEUED, MAX) == due + timedelta(seconds=MAX)
    # Aging: a queued job due MAX earlier goes before a finish-passed one due now.
    assert claim_at(due - timedelta(seconds=MAX + 1), PollClass.QUEUED, MAX) < claim_at(
        due, PollClass.FINISH_PASSED, MAX
    )


# -- apply_decision: what the job row gets -------------------------------------------------------------


class _Session:
    """Stands in for the AsyncSession: apply_decision only adds rows to it."""

    def __init__(self) -> None:
        self.added: list[Any] = []

    def add(self, row: Any) -> None:
        self.added.append(row)

    def add_all(self, rows: list[Any]) -> None:
        self.added.extend(rows)


SETTINGS = relay_settings(
    "sqlite:///unused.db", "http://127.0.0.1:9", RELAY_POLL_INTERVAL_MIN=MIN, RELAY_POLL_INTERVAL_MAX=MAX
)


def new_job(status: JobStatus = JobStatus.PENDING) -> Job:
    return Job(
        id=1,
        video_model_id="vid-1",
        status=status,
        callback_url="http://127.0.0.1:9/hook",
        events=["completed"],
        client_metadata={},
        created_at=T0,
        updated_at=T0,
        expires_at=T0 + timedelta(days=1),
        next_poll_at=T0,
        poll_interval=MIN,
    )


def poll(job: Job, at: datetime, video_status: int, progress: int | None = None) -> None:
    data: dict[str, Any] = {"video_status": video_status}
    if progress is not None:
        data["progress"] = progress
    view = JobView(JobStatus(job.status), job.progress, tuple(job.events))
    decision = decide(view, Answered(data), at, 60.0)
    apply_decision(_Session(), job, decision, at, SETTINGS, polled=True, via="poll")  # type: ignore[arg-type]


def wait_of(job: Job) -> float:
    assert job.next_poll_at is not None and job.last_polled_at is not None
    return (job.next_poll_at - job.last_polled_at).total_seconds()


def test_a_job_row_through_its_life_samples_predicts_and_is_classed() -> None:
    job = new_job()
    poll(job, T0, 1, 0)
    assert job.poll_class == PollClass.QUEUED and job.expected_finish_at is None
    assert job.claim_at == job.next_poll_at + timedelta(seconds=MAX)  # type: ignore[operator]

    at = T0 + timedelta(seconds=10)
    poll(job, at, 2, 0)  # a status change: back to the minimum, samples start afresh from the anchor
    anchor = (T0 + timedelta(seconds=5)).timestamp()  # halfway between the queueing and this poll
    assert MIN <= wait_of(job) <= MIN * 1.1 and job.progress_samples == [[anchor, 0.0], [at.timestamp(), 0.0]]
    assert job.poll_class == PollClass.RUNNING

    # Processing from t=5 s (where the anchor puts it) for 100 s, progress 0 until the first step.
    # A progress change alone no longer resets the interval.
    plan = [1.5, 2.25]
    t = 10.0
    for expected in plan:
        t += wait_of(job)
        poll(job, T0 + timedelta(seconds=t), 2, int(t - 5))
        assert job.poll_interval == pytest.approx(expected) and job.expected_finish_at is None
    while job.expected_finish_at is None:  # backoff until the samples say something
        t += wait_of(job)
        poll(job, T0 + timedelta(seconds=t), 2, int(t - 5))
        assert t < 60, job.progress_samples
    true_end = T0 + timedelta(seconds=105)
    assert abs((job.expected_finish_at - true_end).total_seconds()) <= 0.1 * (105 - t)
    ahead = (job.expected_finish_at - T0).total_seconds() - t
    assert abs(wait_of(job) - min(MAX, max(MIN, ahead))) <= MIN
    assert job.claim_at is not None and job.next_poll_at is not None
    expected_class = PollClass.FINISH_PASSED if ahead <= MAX else PollClass.RUNNING
    assert job.poll_class == expected_class
    assert job.claim_at == job.next_poll_at + timedelta(seconds=int(expected_class) * MAX / 2)

    poll(job, T0 + timedelta(seconds=111), 3, 100)
    assert job.next_poll_at is None and job.claim_at is None
    assert job.expected_finish_at is None and job.progress_samples is None


def test_flat_or_absent_progress_backs_off_without_an_estimate() -> None:
    for progress in (50, None):
        job = new_job(JobStatus.PROCESSING)
        job.poll_interval = MIN
        t = 0.0
        intervals = []
        for _ in range(6):
            poll(job, T0 + timedelta(seconds=t), 2, progress)
            intervals.append(job.poll_interval)
            t += wait_of(job)
        assert job.expected_finish_at is None
        assert intervals == pytest.approx([1.5, 2.25, 3.375, 5.0625, 7.59375, 11.390625])
        assert job.poll_class == PollClass.RUNNING
