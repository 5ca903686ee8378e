"""Pure backoff arithmetic for polls and deliveries (no I/O, no clock)."""

from __future__ import annotations

import random

POLL_GROWTH = 1.5
JITTER = 0.1
RETRY_AFTER_CAP = 86400.0  # a receiver may ask us to wait, but not for more than a day


def jittered(seconds: float, rng: random.Random | None = None, fraction: float = JITTER) -> float:
    """`seconds` moved by up to ±fraction, so many jobs do not fall due in the same instant."""
    r = (rng or random).uniform(-fraction, fraction)
    return max(0.0, seconds * (1 + r))


def next_poll_interval(current: float, *, changed: bool, minimum: float, maximum: float) -> float:
    """Back to the minimum on a change, else x1.5, never outside [minimum, maximum]."""
    if changed:
        return minimum
    return min(maximum, max(minimum, current * POLL_GROWTH))


def retry_delay(attempts: int, schedule: list[float]) -> float | None:
    """Seconds to wait after the `attempts`-th failed attempt, or None when the schedule is spent."""
    if attempts < 1 or attempts > len(schedule):
        return None
    return schedule[attempts - 1]


def honour_retry_after(delay: float, retry_after: float | None) -> float:
    """A receiver's Retry-After wins when it asks for longer than we planned (capped at a day)."""
    if retry_after is None:
        return delay
    return max(delay, min(retry_after, RETRY_AFTER_CAP))
