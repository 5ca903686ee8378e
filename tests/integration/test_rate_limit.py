"""RELAY_AKOOL_RATE_LIMIT holds, and a 1005 answer lowers the rate for a while (issue 3 item 8).

200 jobs that never finish are all due all the time (polls every 0.05–0.2 s each, 32 in flight), so
the demand is far above the limit and the limiter alone decides the rate the simulator observes.
"""

from __future__ import annotations

import asyncio
import time

from app.sandbox.simulator import Simulator
from tests.support.relay import RelayFactory

LIMIT = 40.0
COOLDOWN = 2.0
JOBS = 200
TOLERANCE = 1.10  # measured rate may exceed the limit by 10 %
# A 1 s window may hold a few requests more: the first slot is free, and requests whose slots fell
# just before the window can arrive in it when the event loop is busy (~100 ms of jitter = 4 requests).
# A limiter that let bursts through would show far more (64 in a second with the limit off).
BURST = 4
RECOVERY_WATCH = 40.0  # seconds after the throttle to watch for the rate to come back


def _starts(sim: Simulator, since: float, until: float | None = None) -> list[float]:
    return sorted(
        r.started for r in sim.requests if r.started >= since and (until is None or r.started < until)
    )


def _peak(starts: list[float], window: float = 1.0) -> int:
    """The most requests that started within any `window` seconds."""
    best, lo = 0, 0
    for hi, t in enumerate(starts):
        while t - starts[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _per_second(sim: Simulator, since: float, seconds: int) -> list[int]:
    starts = _starts(sim, since)
    return [sum(1 for t in starts if since + i <= t < since + i + 1) for i in range(seconds)]


async def test_upstream_rate_limit_holds_and_1005_lowers_it(
    start_relay: RelayFactory, simulator: tuple[Simulator, str]
) -> None:
    sim, _ = simulator
    ids = [f"rate-{i:03d}" for i in range(JOBS)]
    for vid in ids:
        sim.script(vid, queue_seconds=1e9)  # queueing forever: every job stays due
    async with start_relay(
        RELAY_AKOOL_RATE_LIMIT=LIMIT,
        RELAY_POLL_CONCURRENCY=32,
        RELAY_POLL_INTERVAL_MIN=0.05,
        RELAY_POLL_INTERVAL_MAX=0.2,
        RELAY_THROTTLE_COOLDOWN=COOLDOWN,
        RELAY_LEASE_SECONDS=60,  # the default: polls waiting for a slot keep their lease
    ) as r:
        registered = await r.client.post(
            "/jobs/batch",
            json={"jobs": [{"video_model_id": v, "callback_url": "http://127.0.0.1:9/unused"} for v in ids]},
        )
        assert registered.status_code == 200, registered.text
        assert {item["status"] for item in registered.json()["results"]} == {201}

        # 1. Steady state: the limit holds and is used.
        t0 = time.monotonic()
        await asyncio.sleep(3.0)
        steady_rate = sim.request_rate(since=t0)
        steady = _starts(sim, t0, t0 + 3.0)
        steady_peak = _peak(steady)
        print(
            f"\nsteady: {len(steady)} requests in 3.0 s = {steady_rate:.1f}/s (limit {LIMIT:.0f}/s), "
            f"peak {steady_peak} in a 1 s window, per second {_per_second(sim, t0, 3)}, "
            f"distinct ids {len({q.video_model_id for q in sim.requests})}"
        )
        assert steady_rate <= LIMIT * TOLERANCE, steady_rate
        assert steady_peak <= LIMIT * TOLERANCE + BURST, steady_peak
        assert steady_rate >= 30, f"the limiter should be the bottleneck, but only {steady_rate:.1f}/s"

        # 2. Akool answers 1005 for half a second: the relay slows down and stays slow for a cool-down.
        t1 = time.monotonic()
        sim.set_faults(throttle=1.0)
        await asyncio.sleep(0.5)
        sim.set_faults()
        t2 = time.monotonic()
        throttled_answers = sum(1 for q in sim.requests if q.code == 1005)
        await asyncio.sleep(1.0)
        during = len(_starts(sim, t1, t2)) / (t2 - t1)
        after = len(_starts(sim, t2, t2 + 1.0))
        health = (await r.client.get("/jobs", params={"limit": 1})).json()["summary"]["upstream"]
        print(
            f"throttle: {throttled_answers} answers were 1005; rate during {during:.1f}/s, "
            f"in the second after {after}/s (limit {LIMIT:.0f}/s); limiter rate now "
            f"{r.relay.poller.limiter.rate:.1f}/s; dashboard upstream {health['state']!r}"
        )
        assert throttled_answers > 0
        assert after <= 0.6 * LIMIT, after
        assert r.relay.poller.limiter.throttled
        assert health["state"] == "throttled"
        await asyncio.sleep(COOLDOWN - 1.0)
        still = len(_starts(sim, t2 + 1.0, t2 + COOLDOWN))
        print(f"throttle: {still} requests from 1 s to {COOLDOWN:.0f} s after the last 1005")
        assert still <= 0.6 * LIMIT * (COOLDOWN - 1.0), still

        # 3. Quiet cool-downs double the rate back to the limit: from the 1/20 floor, four doublings
        # (4 cool-downs) reach 32/s, five reach 40/s. Watch for longer than that, to report when it
        # really comes back, then hold it to the design with a cool-down of slack.
        back = 0.75 * steady_rate
        recovered_after = None
        while time.monotonic() < t2 + RECOVERY_WATCH:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if len(_starts(sim, now - 1.0, now)) >= back:
                recovered_after = now - t2
                break
        timeline = _per_second(sim, t2, int(time.monotonic() - t2))
        limiter = r.relay.poller.limiter
        shown = "never" if recovered_after is None else f"{recovered_after:.1f} s"
        print(
            f"recovery: requests per second after the throttle {timeline}; back to >= {back:.0f}/s "
            f"(75 % of the steady rate) after {shown}; the limiter's own rate reached "
            f"{limiter.rate:.0f}/s (cool-down {COOLDOWN:.0f} s: by design 4-5 cool-downs from the floor)"
        )
        # The whole run never went over the limit, nor polled one job twice at once.
        overall_peak = sim.peak_rate(1.0)
        print(
            f"overall: peak {overall_peak:.0f} requests in any 1 s window; overlaps {sim.stats()['overlap_total']}"
        )
        assert overall_peak <= LIMIT * TOLERANCE + BURST
        assert sim.stats()["overlap_total"] == 0
        assert recovered_after is not None, (
            f"the rate never came back within {RECOVERY_WATCH:.0f} s: {timeline}"
        )
        assert COOLDOWN <= recovered_after <= 6 * COOLDOWN + 1, (recovered_after, timeline)
