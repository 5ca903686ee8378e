"""The simulator's lifelike jobs (app.sandbox.workload): the written model holds, per (seed, id), and the
simulator plays it over real HTTP; without a workload its short linear timeline is unchanged."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import INFO_PATH, ManualClock, Simulator, SimulatorConfig
from app.sandbox.workload import Duration, Timeline, Workload, uniform

IDS = [f"job-{i}" for i in range(600)]


def timelines(workload: Workload, ids: list[str] = IDS) -> list[Timeline]:
    return [workload.timeline(vid) for vid in ids]


@contextlib.asynccontextmanager
async def running(
    config: SimulatorConfig,
) -> AsyncIterator[tuple[Simulator, ManualClock, httpx.AsyncClient]]:
    clock = ManualClock()
    sim = Simulator(config, clock=clock)
    async with serve_in_background(sim.app) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        yield sim, clock, client


async def info(client: httpx.AsyncClient, vid: str) -> dict[str, Any]:
    r = await client.get(INFO_PATH, params={"video_model_id": vid})
    assert r.status_code == 200 and r.json()["code"] == 1000
    data: dict[str, Any] = r.json()["data"]
    return data


async def play(
    client: httpx.AsyncClient, clock: ManualClock, vid: str, step: float
) -> list[tuple[int, int | None]]:
    """(video_status, progress or None when absent) every `step` seconds of the job clock, to its end."""
    seen: list[tuple[int, int | None]] = []
    while True:
        data = await info(client, vid)
        seen.append((data["video_status"], data.get("progress")))
        if data["video_status"] in (3, 4):
            return seen
        clock.advance(step)


# -- the model ---------------------------------------------------------------------------------------


def test_timeline_is_a_function_of_seed_and_id() -> None:
    a, b = Workload("mixed", seed=7), Workload("mixed", seed=7)
    assert timelines(a) == timelines(b)
    assert a.timeline("job-3") == a.timeline("job-3")
    reversed_order = [b.timeline(vid) for vid in reversed(IDS)]
    assert reversed_order[::-1] == timelines(a)  # no state carried from one id to the next
    other_seed = timelines(Workload("mixed", seed=8))
    assert sum(x != y for x, y in zip(timelines(a), other_seed, strict=True)) > 590
    assert len({t.total_seconds for t in timelines(a)}) == len(IDS)  # every id its own


def test_timeline_is_the_same_in_another_process() -> None:
    """sha256 of (seed, id), not Python's salted hash: a benchmark rebuilds the simulator's jobs."""
    code = (
        "import json; from app.sandbox.workload import Workload; "
        "t = Workload('lifelike', seed=3).timeline('job-42'); "
        "print(json.dumps([t.queue_seconds, t.process_seconds, t.steps, t.stalls]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    t = Workload("lifelike", seed=3).timeline("job-42")
    assert json.loads(out.stdout) == json.loads(
        json.dumps([t.queue_seconds, t.process_seconds, t.steps, t.stalls])
    )


def test_durations_follow_the_distribution_and_queueing_takes_10_to_30_percent() -> None:
    for kind in ("lifelike", "jumpy", "noprogress", "mixed"):
        for t in timelines(Workload(kind, seed=1, duration=uniform(20, 50))):
            assert 20 <= t.total_seconds <= 50
            assert 0.10 <= t.queue_seconds / t.total_seconds <= 0.30
    shares = [t.queue_seconds / t.total_seconds for t in timelines(Workload(seed=2))]
    assert min(shares) < 0.12 and max(shares) > 0.28  # the whole range is used
    totals = [t.total_seconds for t in timelines(Workload(seed=2, duration=uniform(20, 50)))]
    assert min(totals) < 21 and max(totals) > 49
    fixed = timelines(Workload(seed=2, duration=Duration(30, 30)))
    assert all(abs(t.total_seconds - 30) < 1e-9 for t in fixed)
    assert Workload().duration == uniform(20, 50)  # the default law


def test_lifelike_progress_rises_in_8_to_20_uneven_noisy_steps_and_stalls_sometimes() -> None:
    lines = timelines(Workload("lifelike", seed=4))
    assert {t.shape for t in lines} == {"lifelike"}
    counts = [len(t.steps) for t in lines]
    assert min(counts) == 8 and max(counts) == 20
    held = 0  # timelines where noise that would have gone backwards is shown flat instead
    for t in lines:
        fractions = [f for f, _ in t.steps]
        values = [p for _, p in t.steps]
        assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] < 1
        assert values == sorted(values), "never backwards"
        assert values[0] >= 0 and values[-1] <= 99, "100 only at the end"
        gaps = [b - a for a, b in zip([0.0, *fractions], [*fractions, 1.0], strict=True)]
        assert max(gaps) > 1.3 * min(gaps), "uneven"
        assert values[0] <= 4 + 100 * 1.5 / (9 * 0.5), "the first step: one chunk of work, plus noise"
        held += any(b == a for a, b in itertools.pairwise(values))
    assert 0.25 < held / len(lines) < 0.8
    stalled = [t for t in lines if t.stalls]
    assert 0.2 < len(stalled) / len(lines) < 0.45  # one in three
    for t in stalled:  # a stall: progress flat for a long stretch (≥ 10 % of the un-stalled time)
        fractions = [0.0, *(f for f, _ in t.steps), 1.0]
        assert max(b - a for a, b in itertools.pairwise(fractions)) >= 0.09
    assert all(t.progress_at(-0.5) == 0 and t.progress_at(0.0) == 0 for t in lines)


def test_jumpy_and_noprogress_kinds() -> None:
    jumpy = timelines(Workload("jumpy", seed=6))
    assert {t.shape for t in jumpy} == {"jumpy"}
    shapes = {tuple(p for _, p in t.steps) for t in jumpy}
    assert shapes == {(50,), (33, 67), (25, 50, 75)}  # e.g. 0 → 50 → 100
    for t in jumpy:
        fractions = [f for f, _ in t.steps]
        assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] < 1
    silent = timelines(Workload("noprogress", seed=6))
    assert {t.shape for t in silent} == {"silent", "zero"}
    for t in silent:
        assert t.steps == ()
        expected = None if t.shape == "silent" else 0
        assert t.progress_at(-0.1) == t.progress_at(0.5) == t.progress_at(0.999) == expected
    mixed = [t.shape for t in timelines(Workload("mixed", seed=6))]
    share = {s: mixed.count(s) / len(mixed) for s in ("lifelike", "jumpy", "silent", "zero")}
    assert 0.62 < share["lifelike"] < 0.78 and 0.10 < share["jumpy"] < 0.21
    assert 0.10 < share["silent"] + share["zero"] < 0.21


def test_scaled_keeps_every_shape_and_divides_every_duration() -> None:
    full = Workload("mixed", seed=9, duration=uniform(20, 50))
    fast = full.scaled(10)
    assert fast.duration == uniform(2, 5)
    for a, b in zip(timelines(full), timelines(fast), strict=True):
        assert b.steps == a.steps and b.shape == a.shape and b.stalls == a.stalls
        assert b.queue_seconds == pytest.approx(a.queue_seconds / 10)
        assert b.process_seconds == pytest.approx(a.process_seconds / 10)
        assert a.scaled(10) == b or a.scaled(10).total_seconds == pytest.approx(b.total_seconds)


def test_spec_text_round_trips() -> None:
    w = Workload.parse("noprogress:seed=3:duration=uniform(2, 5)")
    assert w == Workload("noprogress", 3, uniform(2, 5))
    assert Workload.parse(w.spec()) == w
    assert Workload.parse("jumpy:duration=30") == Workload("jumpy", 0, Duration(30, 30))
    assert Workload.parse("lifelike") == Workload()
    for bad in ("sometimes", "lifelike:speed=2", "lifelike:duration=normal(1,2)", "lifelike:seed=x"):
        with pytest.raises(ValueError):
            Workload.parse(bad)
    with pytest.raises(ValueError):
        uniform(5, 2)


# -- the simulator playing it --------------------------------------------------------------------------


async def test_default_timeline_is_the_short_linear_one() -> None:
    """Exactly what the demo, the tests and the container check rely on: 1 s queueing, then 3 s of
    progress int(100 × elapsed / 3), then completed with 100."""
    async with running(SimulatorConfig()) as (sim, clock, client):
        seen = await play(client, clock, "plain-1", 0.25)
        expected = [(1, 0)] * 4 + [(2, min(99, int(100 * (i * 0.25) / 3))) for i in range(12)] + [(3, 100)]
        assert seen == expected
        assert sim.stats()["workload"] is None
        ended, first_ms = sim.ended_at()["plain-1"], (await info(client, "plain-1"))["create_time"]
        assert ended == pytest.approx(first_ms / 1000 + 4.0)


async def test_simulator_plays_the_lifelike_timeline() -> None:
    workload = Workload("lifelike", seed=11, duration=uniform(20, 50))
    async with running(SimulatorConfig(workload=workload)) as (sim, clock, client):
        vid = "life-1"
        t = workload.timeline(vid)
        q, p = t.queue_seconds, t.process_seconds
        eps = 1e-6
        expected: list[tuple[float, int, int]] = [(0.0, 1, 0), (q - eps, 1, 0), (q + eps, 2, 0)]
        shown = 0
        for fraction, progress in t.steps:  # just before and just after each step
            expected += [(q + fraction * p - eps, 2, shown), (q + fraction * p + eps, 2, progress)]
            shown = progress
        expected += [(q + p - eps, 2, shown), (q + p + eps, 3, 100)]
        seen = []
        for at, _, _ in expected:
            clock.advance(at - clock.now)
            data = await info(client, vid)
            seen.append((at, data["video_status"], data["progress"]))
        assert seen == expected
        shown_values = [value for _, _, value in seen]
        assert shown_values == sorted(shown_values), "never backwards"
        assert sim.stats()["workload"] == workload.spec()
        first_ms = (await info(client, vid))["create_time"]
        assert sim.ended_at()[vid] == pytest.approx(first_ms / 1000 + t.total_seconds)


async def test_simulator_plays_no_progress_and_jumps() -> None:
    quiet = Workload("noprogress", seed=1, duration=uniform(2, 3))
    async with running(SimulatorConfig(workload=quiet)) as (_, clock, client):
        kinds = {vid: quiet.timeline(vid).shape for vid in IDS[:20]}
        silent = next(v for v, k in kinds.items() if k == "silent")
        zero = next(v for v, k in kinds.items() if k == "zero")
        seen = await play(client, clock, silent, 0.1)
        assert (
            seen[-1] == (3, 100) and all(p is None for s, p in seen[:-1]) and {1, 2} <= {s for s, _ in seen}
        )
        seen = await play(client, clock, zero, 0.1)
        assert seen[-1] == (3, 100) and all(p == 0 for _, p in seen[:-1])
        seen = await play(client, clock, "fail-quiet", 0.1)  # the outcome still comes from the id
        assert seen[-1][0] == 4
    jumpy = Workload("jumpy", seed=1, duration=uniform(2, 3))
    async with running(SimulatorConfig(workload=jumpy)) as (_, clock, client):
        seen = await play(client, clock, "jump-1", 0.02)
        values = sorted({p for _, p in seen if p is not None})
        assert values[0] == 0 and values[-1] == 100 and values[1:-1]
        assert values[1:-1] == [p for _, p in jumpy.timeline("jump-1").steps]  # e.g. 0 → 50 → 100


async def test_a_script_still_overrides_a_workload_id() -> None:
    workload = Workload("lifelike", seed=2)
    async with running(SimulatorConfig(workload=workload)) as (sim, clock, client):
        sim.script("short-1", queue_seconds=0.5, process_seconds=1.0)
        seen = await play(client, clock, "short-1", 0.1)
        assert len(seen) == pytest.approx(16, abs=1) and seen[-1] == (3, 100)
        during = {p for s, p in seen if s == 2} - {0}
        assert during <= {p for _, p in workload.timeline("short-1").steps}  # the same shape, faster
