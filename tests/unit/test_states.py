"""The job state machine (app.states.decide): pure, fixed datetimes, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.models import DEFAULT_EVENTS, TERMINAL_STATUSES, JobStatus
from app.states import (
    ALLOWED,
    NOT_FOUND_ANSWERS,
    Answered,
    Cancelled,
    Decision,
    Expired,
    JobView,
    NotFound,
    Observation,
    decide,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
GRACE = 60.0
ALL_EVENTS = ("queueing", "processing", "progress", "completed", "failed", "expired")
UNFINISHED = (JobStatus.PENDING, JobStatus.QUEUEING, JobStatus.PROCESSING)


def view(
    status: JobStatus = JobStatus.PENDING,
    progress: int | None = None,
    events: tuple[str, ...] = ALL_EVENTS,
    not_found_count: int = 0,
    not_found_since: datetime | None = None,
) -> JobView:
    return JobView(status, progress, events, not_found_count, not_found_since)


def seen(video_status: Any, progress: Any = None, **extra: Any) -> Answered:
    data: dict[str, Any] = {"_id": "abc", "video_status": video_status, **extra}
    if progress is not None:
        data["progress"] = progress
    return Answered(data)


def run(job: JobView, observation: Observation, now: datetime = T0, grace: float = GRACE) -> Decision:
    return decide(job, observation, now, grace)


def assert_nothing_happened(decision: Decision, status: JobStatus) -> None:
    assert decision.status == status
    assert decision.transitions == []
    assert decision.events == []
    assert "status" not in decision.fields


# -- the transition table ----------------------------------------------------------------------------


def test_the_forward_path_pending_queueing_processing_completed() -> None:
    job = view(JobStatus.PENDING)
    d1 = run(job, seen(1, 0))
    assert d1.status == JobStatus.QUEUEING
    assert d1.transitions == [(JobStatus.PENDING, JobStatus.QUEUEING, 0)]
    assert d1.fields["status"] == "queueing"
    assert d1.fields["video_status"] == 1
    assert d1.changed

    d2 = run(view(JobStatus.QUEUEING, 0), seen(2, 10))
    assert d2.status == JobStatus.PROCESSING
    assert d2.transitions == [(JobStatus.QUEUEING, JobStatus.PROCESSING, 10)]
    assert d2.fields["status"] == "processing"
    assert d2.fields["progress"] == 10

    d3 = run(view(JobStatus.PROCESSING, 90), seen(3, 100, video="https://cdn/x.mp4"))
    assert d3.status == JobStatus.COMPLETED
    assert d3.terminal
    assert d3.transitions == [(JobStatus.PROCESSING, JobStatus.COMPLETED, 100)]
    assert d3.fields["status"] == "completed"
    assert d3.fields["video_url"] == "https://cdn/x.mp4"
    assert d3.fields["progress"] == 100


def test_a_job_may_jump_from_pending_straight_to_completed() -> None:
    splits = {"original_srt_url": "o", "translated_srt_url": "t", "no_caption_video_url": "n"}
    d = run(view(JobStatus.PENDING), seen(3, video="https://cdn/y.mp4", audio_splits=splits))
    assert d.status == JobStatus.COMPLETED
    assert d.transitions == [
        (JobStatus.PENDING, JobStatus.COMPLETED, 100)
    ]  # one step, progress defaults to 100
    assert d.fields["video_url"] == "https://cdn/y.mp4"
    assert d.fields["audio_splits"] == splits
    assert d.fields["progress"] == 100
    assert d.events == ["completed"]


def test_a_job_may_jump_from_pending_straight_to_processing() -> None:
    d = run(view(JobStatus.PENDING), seen(2, 40))
    assert d.transitions == [(JobStatus.PENDING, JobStatus.PROCESSING, 40)]
    assert d.events == ["processing"]  # not "progress": it was not processing before


def test_no_backwards_move_from_processing_to_queueing() -> None:
    d = run(view(JobStatus.PROCESSING, 50), seen(1, 50))
    assert_nothing_happened(d, JobStatus.PROCESSING)


def test_a_backwards_answer_does_not_regress_the_jobs_video_status() -> None:
    # A stale "queueing" answer after "processing" must not leave the job saying status=processing
    # but video_status=1: the job JSON would contradict itself.
    d = run(view(JobStatus.PROCESSING, 50), seen(1, 50))
    assert d.fields.get("video_status") in (None, 2)


def test_no_backwards_move_from_queueing_to_pending_like_answers() -> None:
    # Nothing maps to pending: an unknown status leaves queueing alone.
    d = run(view(JobStatus.QUEUEING, 0), seen(0))
    assert_nothing_happened(d, JobStatus.QUEUEING)


def test_the_allowed_table_only_moves_forward() -> None:
    order = [JobStatus.PENDING, JobStatus.QUEUEING, JobStatus.PROCESSING]
    for i, status in enumerate(order):
        for earlier in order[: i + 1]:
            assert earlier not in ALLOWED[status], f"{status} may not move to {earlier}"
        assert ALLOWED[status] >= TERMINAL_STATUSES
    for terminal in TERMINAL_STATUSES:
        assert ALLOWED[terminal] == frozenset()


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
@pytest.mark.parametrize(
    "observation",
    [
        seen(1, 0),
        seen(2, 50),
        seen(3, 100, video="v"),
        seen(4, error_code=1),
        NotFound(),
        Expired(),
        Cancelled(),
    ],
    ids=["queueing", "processing", "completed", "failed", "not_found", "expired", "cancelled"],
)
def test_a_terminal_job_never_changes(terminal: JobStatus, observation: Observation) -> None:
    job = view(terminal, 100, not_found_count=2, not_found_since=T0 - timedelta(hours=1))
    d = run(job, observation, now=T0 + timedelta(days=2), grace=0)
    assert d.status == terminal
    assert d.transitions == []
    assert d.events == []
    assert d.fields == {}
    assert not d.changed


def test_a_repeated_answer_changes_nothing() -> None:
    d = run(view(JobStatus.QUEUEING, 0), seen(1, 0))
    assert_nothing_happened(d, JobStatus.QUEUEING)
    assert not d.changed


def test_video_status_given_as_string_is_understood() -> None:
    d = run(view(JobStatus.PENDING), seen("2", "30"))
    assert d.status == JobStatus.PROCESSING
    assert d.fields["progress"] == 30


def test_progress_is_clamped_to_0_100() -> None:
    assert run(view(JobStatus.QUEUEING, 0), seen(2, 150)).fields["progress"] == 100
    assert run(view(JobStatus.QUEUEING, 5), seen(2, -3)).fields["progress"] == 0


def test_completed_with_empty_video_and_no_splits() -> None:
    d = run(view(JobStatus.PROCESSING, 99), seen(3, 100, video="", audio_splits="not a dict"))
    assert d.status == JobStatus.COMPLETED
    assert d.fields["video_url"] is None
    assert d.fields["audio_splits"] is None


def test_the_upstream_data_is_kept_as_it_came() -> None:
    data = {"video_status": 2, "progress": 10, "something_new": {"x": [1, 2]}, "_id": "q"}
    d = run(view(JobStatus.QUEUEING), Answered(data))
    assert d.fields["upstream"] == data


# -- events ------------------------------------------------------------------------------------------


def test_events_are_only_for_subscribed_names() -> None:
    only_completed = ("completed",)
    assert run(view(JobStatus.PENDING, events=only_completed), seen(1, 0)).events == []
    assert run(view(JobStatus.QUEUEING, 0, events=only_completed), seen(2, 5)).events == []
    assert run(view(JobStatus.PROCESSING, 5, events=only_completed), seen(2, 50)).events == []
    assert run(view(JobStatus.PROCESSING, 50, events=only_completed), seen(3, 100)).events == ["completed"]
    assert run(view(JobStatus.PROCESSING, 50, events=only_completed), seen(4)).events == []


def test_subscribed_intermediate_events_are_emitted() -> None:
    assert run(view(JobStatus.PENDING), seen(1, 0)).events == ["queueing"]
    assert run(view(JobStatus.QUEUEING, 0), seen(2, 5)).events == ["processing"]


def test_default_events_are_the_terminal_ones() -> None:
    events = tuple(DEFAULT_EVENTS)
    assert set(events) == {"completed", "failed", "expired"}
    assert run(view(JobStatus.PENDING, events=events), seen(1, 0)).events == []
    assert run(view(JobStatus.PENDING, events=events), seen(4, error_code=1)).events == ["failed"]
    assert run(view(JobStatus.PENDING, events=events), Expired()).events == ["expired"]


def test_an_event_for_a_skipped_status_is_not_invented() -> None:
    # pending → completed in one answer: there was no queueing or processing to tell about.
    d = run(view(JobStatus.PENDING), seen(3, 100, video="v"))
    assert d.events == ["completed"]


# -- progress ----------------------------------------------------------------------------------------


def test_progress_event_fires_when_progress_changes_while_processing() -> None:
    d = run(view(JobStatus.PROCESSING, 10), seen(2, 20))
    assert d.events == ["progress"]
    assert d.fields["progress"] == 20
    assert d.changed
    assert d.transitions == []


def test_no_progress_event_when_progress_is_unchanged() -> None:
    d = run(view(JobStatus.PROCESSING, 20), seen(2, 20))
    assert d.events == []
    assert not d.changed
    assert "progress" not in d.fields


def test_no_progress_event_when_progress_is_missing() -> None:
    d = run(view(JobStatus.PROCESSING, 20), seen(2))
    assert d.events == []
    assert not d.changed


def test_no_progress_event_unless_subscribed() -> None:
    d = run(view(JobStatus.PROCESSING, 10, events=("completed",)), seen(2, 20))
    assert d.events == []
    assert d.fields["progress"] == 20
    assert d.changed  # still a change a client sees (updated_at), though the poll interval no longer resets


def test_no_progress_event_outside_processing() -> None:
    # queueing with changing progress
    assert "progress" not in run(view(JobStatus.QUEUEING, 0), seen(1, 3)).events
    # entering processing: the processing event, not a progress one
    assert run(view(JobStatus.QUEUEING, 0), seen(2, 30)).events == ["processing"]
    # leaving processing for completed with a new progress: the completed event only
    assert run(view(JobStatus.PROCESSING, 50), seen(3, 100, video="v")).events == ["completed"]
    # failing with a new progress: the failed event only
    assert run(view(JobStatus.PROCESSING, 50), seen(4, 60, error_code=1)).events == ["failed"]


# -- failed ------------------------------------------------------------------------------------------


def test_a_failed_job_carries_error_code_and_reason() -> None:
    d = run(view(JobStatus.PROCESSING, 40), seen(4, error_code="100203", error_reason="no speech detected"))
    assert d.status == JobStatus.FAILED
    assert d.terminal
    assert d.transitions == [(JobStatus.PROCESSING, JobStatus.FAILED, 40)]
    assert d.fields["status"] == "failed"
    assert d.fields["error_code"] == 100203
    assert d.fields["error_reason"] == "no speech detected"
    assert d.fields["video_status"] == 4
    assert d.events == ["failed"]


def test_a_failed_job_without_error_details() -> None:
    d = run(view(JobStatus.QUEUEING), seen(4, error_code="", error_reason=""))
    assert d.status == JobStatus.FAILED
    assert d.fields["error_code"] is None
    assert d.fields["error_reason"] is None


def test_a_garbled_error_code_does_not_break_the_decision() -> None:
    d = run(view(JobStatus.QUEUEING), seen(4, error_code="n/a", error_reason="boom"))
    assert d.status == JobStatus.FAILED
    assert d.fields["error_code"] is None
    assert d.fields["error_reason"] == "boom"


# -- not found ---------------------------------------------------------------------------------------


def test_not_found_answers_needed_is_three() -> None:
    assert NOT_FOUND_ANSWERS == 3


def _not_found_series(times: list[datetime], grace: float = GRACE) -> list[Decision]:
    """Feed NotFound answers at the given times, carrying the counter like the poller does."""
    job = view(JobStatus.PENDING)
    decisions = []
    for at in times:
        d = run(job, NotFound(), now=at, grace=grace)
        decisions.append(d)
        job = view(
            d.status,
            events=job.events,
            not_found_count=d.fields.get("not_found_count", job.not_found_count),
            not_found_since=d.fields.get("not_found_since", job.not_found_since),
        )
    return decisions


def test_not_found_counts_and_remembers_when_it_started() -> None:
    d = run(view(JobStatus.PENDING), NotFound(), now=T0)
    assert d.status == JobStatus.PENDING
    assert d.fields["not_found_count"] == 1
    assert d.fields["not_found_since"] == T0
    assert d.transitions == [] and d.events == []

    d2 = run(
        view(JobStatus.PENDING, not_found_count=1, not_found_since=T0),
        NotFound(),
        now=T0 + timedelta(seconds=5),
    )
    assert d2.fields["not_found_count"] == 2
    assert d2.fields["not_found_since"] == T0  # still the first one


def test_three_answers_within_the_grace_do_not_fail_the_job() -> None:
    times = [T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=59)]
    decisions = _not_found_series(times)
    assert [d.status for d in decisions] == [JobStatus.PENDING] * 3


def test_the_grace_without_three_answers_does_not_fail_the_job() -> None:
    times = [T0, T0 + timedelta(hours=5)]
    decisions = _not_found_series(times)
    assert [d.status for d in decisions] == [JobStatus.PENDING] * 2


def test_three_answers_over_the_grace_fail_the_job() -> None:
    times = [T0, T0 + timedelta(seconds=30), T0 + timedelta(seconds=60)]
    *_, last = _not_found_series(times)
    assert last.status == JobStatus.FAILED
    assert last.transitions == [(JobStatus.PENDING, JobStatus.FAILED, None)]
    assert last.events == ["failed"]
    assert "does not exist" in last.fields["error_reason"]


def test_answers_keep_counting_until_both_conditions_hold() -> None:
    times = [T0 + timedelta(seconds=s) for s in (0, 1, 2, 3, 30, 61)]
    decisions = _not_found_series(times)
    assert [d.status for d in decisions] == [JobStatus.PENDING] * 5 + [JobStatus.FAILED]
    assert decisions[3].fields["not_found_count"] == 4


def test_zero_grace_fails_on_the_third_answer() -> None:
    decisions = _not_found_series([T0, T0, T0], grace=0)
    assert [d.status for d in decisions] == [JobStatus.PENDING, JobStatus.PENDING, JobStatus.FAILED]


def test_not_found_fails_a_queueing_or_processing_job_too() -> None:
    since = T0 - timedelta(seconds=120)
    for status in (JobStatus.QUEUEING, JobStatus.PROCESSING):
        d = run(view(status, 30, not_found_count=2, not_found_since=since), NotFound(), now=T0)
        assert d.status == JobStatus.FAILED
        assert d.transitions == [(status, JobStatus.FAILED, 30)]


def test_a_seen_answer_resets_the_not_found_counter() -> None:
    job = view(JobStatus.PENDING, not_found_count=2, not_found_since=T0)
    d = run(job, seen(1, 0), now=T0 + timedelta(seconds=90))
    assert d.fields["not_found_count"] == 0
    assert d.fields["not_found_since"] is None
    assert d.status == JobStatus.QUEUEING
    # after the reset, two more "does not exist" answers are not enough even past the grace
    reset = view(JobStatus.QUEUEING, 0, not_found_count=0, not_found_since=None)
    d1 = run(reset, NotFound(), now=T0 + timedelta(seconds=100))
    assert d1.fields["not_found_count"] == 1
    assert d1.fields["not_found_since"] == T0 + timedelta(seconds=100)
    assert d1.status == JobStatus.QUEUEING


def test_a_seen_answer_with_unknown_status_still_resets_the_not_found_counter() -> None:
    d = run(view(JobStatus.PENDING, not_found_count=2, not_found_since=T0), seen(None), now=T0)
    assert d.fields["not_found_count"] == 0
    assert d.fields["not_found_since"] is None


# -- expired / cancelled -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", UNFINISHED)
def test_expired_ends_an_unfinished_job(status: JobStatus) -> None:
    d = run(view(status, 42 if status == JobStatus.PROCESSING else None), Expired())
    assert d.status == JobStatus.EXPIRED
    assert d.terminal
    assert d.fields["status"] == "expired"
    assert d.transitions == [(status, JobStatus.EXPIRED, 42 if status == JobStatus.PROCESSING else None)]
    assert d.events == ["expired"]


def test_expired_emits_no_event_unless_subscribed() -> None:
    d = run(view(JobStatus.QUEUEING, events=("completed",)), Expired())
    assert d.status == JobStatus.EXPIRED
    assert d.events == []


@pytest.mark.parametrize("status", UNFINISHED)
def test_cancelled_ends_an_unfinished_job_without_an_event(status: JobStatus) -> None:
    d = run(view(status), Cancelled())
    assert d.status == JobStatus.CANCELLED
    assert d.terminal
    assert d.fields["status"] == "cancelled"
    assert d.transitions == [(status, JobStatus.CANCELLED, None)]
    assert d.events == []  # there is no "cancelled" event name


# -- unknown answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("video_status", [None, 0, 5, 7, -1, "abc", "", [2], {"v": 2}])
@pytest.mark.parametrize("status", UNFINISHED)
def test_a_seen_with_unknown_video_status_changes_nothing(video_status: Any, status: JobStatus) -> None:
    progress = 30 if status == JobStatus.PROCESSING else None
    d = run(view(status, progress), seen(video_status, 77, video="v", error_code=1, error_reason="r"))
    assert_nothing_happened(d, status)
    assert not d.changed
    # Only bookkeeping (the raw answer, the not-found reset) may be recorded.
    assert set(d.fields) <= {"upstream", "not_found_count", "not_found_since"}


def test_a_seen_without_video_status_changes_nothing() -> None:
    d = run(view(JobStatus.QUEUEING, 0), Answered({"progress": 50}))
    assert_nothing_happened(d, JobStatus.QUEUEING)
    assert "progress" not in d.fields
