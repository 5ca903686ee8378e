"""Backoff arithmetic for polls and deliveries (app.retry): pure functions, no clock."""

from __future__ import annotations

import random
import statistics

import pytest

from app.retry import (
    JITTER,
    POLL_GROWTH,
    RETRY_AFTER_CAP,
    honour_retry_after,
    jittered,
    next_poll_interval,
    retry_delay,
)

DAY = 86400.0
SPEC_SCHEDULE = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


# -- polls -------------------------------------------------------------------------------------------


def test_constants_match_the_spec() -> None:
    assert POLL_GROWTH == 1.5
    assert JITTER == 0.1
    assert RETRY_AFTER_CAP == DAY


def test_poll_interval_grows_by_half_while_nothing_changes() -> None:
    assert next_poll_interval(5, changed=False, minimum=5, maximum=60) == pytest.approx(7.5)
    assert next_poll_interval(7.5, changed=False, minimum=5, maximum=60) == pytest.approx(11.25)
    assert next_poll_interval(11.25, changed=False, minimum=5, maximum=60) == pytest.approx(16.875)


def test_poll_interval_is_capped_at_the_maximum() -> None:
    assert next_poll_interval(50, changed=False, minimum=5, maximum=60) == 60
    assert next_poll_interval(60, changed=False, minimum=5, maximum=60) == 60
    # Even a stored interval above the maximum (e.g. the maximum was lowered) comes back down.
    assert next_poll_interval(500, changed=False, minimum=5, maximum=60) == 60


def test_poll_interval_walks_from_minimum_to_maximum_and_stays() -> None:
    interval, seen = 5.0, [5.0]
    for _ in range(20):
        interval = next_poll_interval(interval, changed=False, minimum=5, maximum=60)
        seen.append(interval)
    assert seen == sorted(seen), "the interval never shrinks while nothing changes"
    assert seen[-1] == 60
    assert seen.index(60) == 7  # 5 → 7.5 → 11.25 → 16.9 → 25.3 → 38 → 57 → 60


def test_poll_interval_resets_to_the_minimum_on_a_change() -> None:
    assert next_poll_interval(60, changed=True, minimum=5, maximum=60) == 5
    assert next_poll_interval(5, changed=True, minimum=5, maximum=60) == 5
    assert next_poll_interval(0.3, changed=True, minimum=0.1, maximum=0.3) == pytest.approx(0.1)


@pytest.mark.parametrize("current", [0.0, 0.5, 1.0, 3.3, -2.0])
def test_poll_interval_is_never_below_the_minimum(current: float) -> None:
    assert next_poll_interval(current, changed=False, minimum=5, maximum=60) >= 5


def test_poll_interval_accepts_fractions() -> None:
    assert next_poll_interval(0.1, changed=False, minimum=0.1, maximum=0.3) == pytest.approx(0.15)
    assert next_poll_interval(0.25, changed=False, minimum=0.1, maximum=0.3) == pytest.approx(0.3)


# -- jitter ------------------------------------------------------------------------------------------


def test_jitter_stays_within_ten_percent() -> None:
    rng = random.Random(1234)
    samples = [jittered(100.0, rng) for _ in range(5000)]
    assert all(90.0 <= s <= 110.0 for s in samples)
    # It really spreads the values, on both sides, and is centred on the plan.
    assert min(samples) < 92 and max(samples) > 108
    assert statistics.fmean(samples) == pytest.approx(100.0, abs=1.0)


def test_jitter_is_reproducible_with_a_seeded_random() -> None:
    a = [jittered(10.0, random.Random(7)) for _ in range(3)]
    b = [jittered(10.0, random.Random(7)) for _ in range(3)]
    assert a == b
    rng1, rng2 = random.Random(42), random.Random(42)
    assert [jittered(5.0, rng1) for _ in range(50)] == [jittered(5.0, rng2) for _ in range(50)]


def test_jitter_of_zero_is_zero_and_never_negative() -> None:
    rng = random.Random(0)
    assert jittered(0.0, rng) == 0.0
    assert all(jittered(0.1, rng) >= 0 for _ in range(1000))


def test_jitter_fraction_is_a_parameter() -> None:
    rng = random.Random(3)
    samples = [jittered(10.0, rng, fraction=0.5) for _ in range(2000)]
    assert all(5.0 <= s <= 15.0 for s in samples)
    assert min(samples) < 6 and max(samples) > 14


def test_jitter_without_a_rng_uses_the_module_random() -> None:
    samples = [jittered(10.0) for _ in range(200)]
    assert all(9.0 <= s <= 11.0 for s in samples)


# -- delivery retries --------------------------------------------------------------------------------


def test_retry_delay_follows_the_schedule_attempt_by_attempt() -> None:
    for attempt, expected in enumerate(SPEC_SCHEDULE, start=1):
        assert retry_delay(attempt, SPEC_SCHEDULE) == expected


def test_retry_delay_is_none_after_the_schedule() -> None:
    assert retry_delay(len(SPEC_SCHEDULE) + 1, SPEC_SCHEDULE) is None
    assert retry_delay(100, SPEC_SCHEDULE) is None
    assert retry_delay(2, [0.1]) is None


def test_retry_delay_before_any_attempt_is_none() -> None:
    assert retry_delay(0, SPEC_SCHEDULE) is None
    assert retry_delay(-1, SPEC_SCHEDULE) is None


def test_retry_delay_with_fractional_schedule() -> None:
    assert retry_delay(1, [0.1, 0.2]) == pytest.approx(0.1)
    assert retry_delay(2, [0.1, 0.2]) == pytest.approx(0.2)
    assert retry_delay(3, [0.1, 0.2]) is None


def test_retry_delay_with_an_empty_schedule_is_none() -> None:
    assert retry_delay(1, []) is None


# -- Retry-After -------------------------------------------------------------------------------------


def test_retry_after_longer_than_planned_wins() -> None:
    assert honour_retry_after(5.0, 120.0) == 120.0


def test_retry_after_shorter_than_planned_is_ignored() -> None:
    assert honour_retry_after(300.0, 10.0) == 300.0
    assert honour_retry_after(300.0, 0.0) == 300.0


def test_no_retry_after_keeps_the_plan() -> None:
    assert honour_retry_after(5.0, None) == 5.0


def test_retry_after_is_capped_at_a_day() -> None:
    assert honour_retry_after(5.0, 10 * DAY) == DAY
    assert honour_retry_after(5.0, DAY + 1) == DAY
    assert honour_retry_after(5.0, float("inf")) == DAY


def test_retry_after_cap_does_not_shorten_our_own_plan() -> None:
    # The cap limits what a receiver may ask for; it does not cut our own longer delay.
    assert honour_retry_after(2 * DAY, 3 * DAY) == 2 * DAY


def test_negative_retry_after_is_ignored() -> None:
    assert honour_retry_after(5.0, -30.0) == 5.0
