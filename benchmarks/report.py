"""The figures as a table (terminal), a JSON file, and a short Markdown table for the README."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# (what, target text, how to read the figure, comparison) per issue 5.
Target = tuple[str, str, Any, bool]


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = (
            f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.1f}" if abs(value) >= 10 else f"{value:g}"
        )
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text}{unit}"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of issue 5 the run has figures for: what, value, target, met."""
    rows: list[dict[str, Any]] = []

    def add(what: str, value: Any, target: str, met: bool | None) -> None:
        rows.append({"what": what, "value": value, "target": target, "met": met})

    if (poll := results.get("poll")) is not None:
        add("poll throughput ratio (relay / bare httpx)", poll["ratio"], "≥ 0.7", poll["ratio"] >= 0.7)
    if (scale := results.get("scale")) is not None:
        for size, pair in scale["sizes"].items():
            relay = pair["relay"]
            if int(size) >= 100_000:
                add(
                    f"RSS at {int(size):,} jobs (MB)",
                    relay["rss_peak_mb"],
                    "≤ 250",
                    relay["rss_peak_mb"] <= 250,
                )
            add(
                f"worst lag at {int(size):,} jobs (ms)",
                relay["lag_max_ms"],
                "≤ 100",
                relay["lag_max_ms"] <= 100,
            )
            lost = relay["lost_due_polls"]
            add(f"due polls lost at {int(size):,} jobs", lost, "0", lost == 0)
    if (lat := results.get("latency")) is not None:
        load = _load(lat)
        add(
            f"callback latency p50, {load} (ms)",
            lat["p50_ms"],
            "≤ 20",
            lat["p50_ms"] is not None and lat["p50_ms"] <= 20,
        )
        add(
            f"callback latency p99, {load} (ms)",
            lat["p99_ms"],
            "≤ 100",
            lat["p99_ms"] is not None and lat["p99_ms"] <= 100,
        )
    if (push := results.get("push")) is not None:
        with_push = push["with_push"]
        p50, p99 = with_push["p50_ms"], with_push["p99_ms"]
        add("completion → callback with push, p50 (ms)", p50, "≤ 300", p50 is not None and p50 <= 300)
        add("completion → callback with push, p99 (ms)", p99, "≤ 1,500", p99 is not None and p99 <= 1500)
    if (det := results.get("detection")) is not None:
        _detection_targets(det, add)
    if (api := results.get("api")) is not None:
        batch = api["post_jobs_batch"]["jobs_per_s"]
        add("POST /jobs/batch (jobs/s)", batch, "≥ 5,000", batch >= 5000)
        p99 = api["get_jobs"]["p99_ms"]
        add("GET /jobs p99 (ms)", p99, "≤ 50", p99 <= 50)
        if (stats := api.get("get_stats")) is not None:
            add("GET /stats?minutes=60 p99 (ms)", stats["p99_ms"], "≤ 50", stats["p99_ms"] <= 50)
    return rows


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measurement, relay, reference) lines for the table."""
    rows: list[tuple[str, str, str]] = []
    if (poll := results.get("poll")) is not None:
        r, b = poll["relay"], poll["bare_httpx"]
        rows.append(
            (
                f"poll throughput, concurrency {poll['concurrency']}",
                f"{_num(r['polls_per_s'])} polls/s, {r['cpu_ms_per_poll']} ms CPU/poll",
                f"bare httpx {_num(b['polls_per_s'])} polls/s, {b['cpu_ms_per_poll']} ms CPU/poll; "
                f"ratio {poll['ratio']}",
            )
        )
    if (scale := results.get("scale")) is not None:
        for size, pair in scale["sizes"].items():
            r, nv = pair["relay"], pair["naive_apscheduler"]
            label = f"{int(size):,} jobs"
            rows.append(
                (
                    f"{label}: RSS peak",
                    _num(r["rss_peak_mb"], " MB"),
                    f"naive {_num(nv['rss_peak_mb'], ' MB')}",
                )
            )
            rows.append(
                (
                    f"{label}: worst loop lag",
                    f"{_num(r['lag_max_ms'], ' ms')} (machine alone {_num(_control(r), ' ms')})",
                    f"naive {_num(nv['lag_max_ms'], ' ms')} (machine alone {_num(_control(nv), ' ms')})",
                )
            )
            polled = (
                f"all polled in {r['all_polled_s']} s"
                if r["all_polled_s"] is not None
                else f"{r['polled_once']:,} polled in {r['run_s']} s (all: ~{_num(r['projected_all_polled_s'])} s)"
            )
            rows.append(
                (
                    f"{label}: cold start, all due",
                    f"first claim {_num(r['first_claim_ms'], ' ms')}; {polled}",
                    f"naive first round {_num(nv['first_round_s'], ' s')} (adding jobs {nv['add_jobs_s']} s)",
                )
            )
            rows.append(
                (
                    f"{label}: due polls lost",
                    f"{r['lost_due_polls']:,}",
                    f"naive {nv['lost_runs']:,} of {nv['expected_runs']:,} due runs never ran "
                    f"({nv['missed']:,} reported missed)",
                )
            )
    if (first := results.get("latency")) is not None:
        for lat in [first, *first.get("other_loads", [])]:
            rows.append(
                (
                    f"callback latency, {lat['jobs']:,} jobs, {_load(lat)}",
                    f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms",
                    f"{lat['callbacks']:,} callbacks; relay at {lat['polls_per_s']} polls/s, "
                    f"{lat['relay_cpu_utilisation']:.0%} CPU",
                )
            )
    if (push := results.get("push")) is not None:
        for key, label in (("with_push", "with Akool's push"), ("poll_only", "polling only")):
            run = push[key]
            rows.append(
                (
                    f"completion → callback, {run['jobs']} jobs of 6–15 s, default intervals, {label}",
                    f"p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, mean {run['mean_ms']} ms",
                    f"{run['callbacks']}/{run['jobs']} callbacks, {run['polls_per_job']} polls/job, "
                    f"{run['pushes_sent']} pushes",
                )
            )
    if (det := results.get("detection")) is not None:
        rows.extend(_detection_rows(det))
    if (api := results.get("api")) is not None:
        g, b, s = api["get_jobs"], api["post_jobs_batch"], api["post_jobs"]
        n = api["jobs_in_database"]
        rows.append(
            (f"GET /jobs, {n:,} jobs in db", f"p50 {g['p50_ms']} ms, p99 {g['p99_ms']} ms", "sequential")
        )
        if (st := api.get("get_stats")) is not None:
            rows.append(
                (
                    f"GET /stats?minutes=60, {n:,} jobs in db",
                    f"p50 {st['p50_ms']} ms, p99 {st['p99_ms']} ms",
                    f"sequential; {st['finished_in_window']:,} finished and "
                    f"{st['delivered_in_window']:,} delivered in the hour",
                )
            )
        rows.append(
            ("POST /jobs/batch (1,000)", f"{_num(b['jobs_per_s'])} jobs/s", f"p50 {b['p50_ms']} ms/request")
        )
        rows.append(
            (
                f"POST /jobs, {s['concurrency']} workers",
                f"{_num(s['requests_per_s'])} requests/s",
                f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms",
            )
        )
    return rows


def _detection_targets(det: dict[str, Any], add: Callable[[str, Any, str, bool | None], None]) -> None:
    """Issue 11's targets: against fixed figures, or against today's policy simulated in the same run."""
    scaled = "" if det["scale"] == 1 else f", ×{det['scale']:g} time-scaled, scaled back"

    def at_most(what: str, value: Any, bound: Any, text: str, relay: dict[str, Any]) -> None:
        ok = value is not None and bound is not None and value <= bound
        if relay.get("missing"):  # figures of the jobs that made it: not met, whatever they say
            ok, text = False, f"{text}; {relay['missing']} callbacks missing"
        if relay.get("below_budget"):
            ok, text = False, f"{text}; relay below its budget (short of CPU?)"
        add(f"detection delay{scaled}: {what}", value, text, ok)

    if (sat := det["workloads"].get("saturated")) is not None:
        relay, today = sat["relay"], sat["today"]
        at_most("saturated, mean (s)", relay["mean_s"], 2.5, "≤ 2.5", relay)
        at_most("saturated, p50 (s)", relay["p50_s"], 1.5, "≤ 1.5", relay)
        tp = today["polls_per_job"]
        at_most("saturated, polls/job", relay["polls_per_job"], tp, f"≤ {tp} (today's policy)", relay)
    if (light := det["workloads"].get("light")) is not None:
        relay, today = light["relay"], light["today"]
        at_most("light, p50 (s)", relay["p50_s"], 1.0, "≤ 1", relay)
        bound = round(0.7 * today["polls_per_job"], 2)
        at_most("light, polls/job", relay["polls_per_job"], bound, f"≤ {bound} (0.7 × today's policy)", relay)
    if (quiet := det["workloads"].get("no_progress")) is not None:
        relay, today = quiet["relay"], quiet["today"]
        tm, tp = today["mean_s"], today["polls_per_job"]
        at_most("no progress, mean (s)", relay["mean_s"], tm, f"≤ {tm} (today's policy)", relay)
        at_most("no progress, polls/job", relay["polls_per_job"], tp, f"≤ {tp} (today's policy)", relay)


def _detection_rows(det: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One line per workload: the relay (a real process) beside the simulated references."""

    def figures(f: dict[str, Any]) -> str:
        return f"mean {f['mean_s']} s, p50 {f['p50_s']} s, p99 {f['p99_s']} s, {f['polls_per_job']} polls/job"

    scaled = "full scale" if det["scale"] == 1 else f"×{det['scale']:g} time-scaled, scaled back"
    rows = []
    for w in det["workloads"].values():
        relay = w["relay"]
        missing = f" ({relay['missing']} callbacks missing)" if relay.get("missing") else ""
        if relay.get("below_budget"):
            missing += (
                f"; BELOW BUDGET: first polls at {relay['first_polls_per_s']:g}/s of {relay['rate_limit']:g}/s "
                "(relay short of CPU?)"
            )
        rows.append(
            (
                f"detection delay, {w['label']}: {w['jobs']} jobs of {det['duration_s']} s, budget "
                f"{det['rate_limit']:g}/s, intervals {det['interval_min_s']:g}–{det['interval_max_s']:g} s "
                f"({scaled})",
                figures(relay) + missing,
                f"simulated, same budget: today's policy {figures(w['today'])}; fixed 3 s "
                f"{figures(w['fixed_3s'])}; oracle {figures(w['oracle'])}",
            )
        )
    return rows


def _control(figures: dict[str, Any]) -> Any:
    """Worst lag of the idle ticker that ran beside the measurement: the machine's own share."""
    return (figures.get("control") or {}).get("lag_max_ms")


def show(results: dict[str, Any], console: Console) -> None:
    table = Table(title="akool-relay benchmarks", show_lines=False)
    table.add_column("measurement")
    table.add_column("relay")
    table.add_column("reference (same run)")
    for row in _rows(results):
        table.add_row(*row)
    console.print(table)
    goals = Table(title="targets (issue 5)")
    for column in ("what", "value", "target", "met"):
        goals.add_column(column)
    for t in results["targets"]:
        mark = "[green]yes[/green]" if t["met"] else "[red]NO[/red]"
        goals.add_row(t["what"], _num(t["value"]), t["target"], mark)
    console.print(goals)
    m = results["machine"]
    console.print(
        f"machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, {m['platform']}, "
        f"database {m['database']}, Python loop {m['python_loop_ns']} ns/iteration, "
        f"load average at start {m['load_average_at_start']} and end {m.get('load_average_at_end')}, "
        f"wall time {results['wall_time_s']} s"
    )


def markdown(results: dict[str, Any]) -> str:
    """The short table for README: what, result, reference, machine (generated, never typed)."""
    m = results["machine"]
    lines = [
        "| measurement | relay | reference (same run) |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in _rows(results)),
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}, Python loop {m['python_loop_ns']} ns/iteration, "
        f"load average {m['load_average_at_start'][0]} at start), {m['memory_gb']} GB, Python {m['python']}, "
        f"{m['platform']}; database {m['database']}; {m['date']}; commit {m['git_commit']}. "
        f"Produced by `make bench` ({results['wall_time_s']} s); how each figure is measured: "
        "benchmarks/README.md.",
    ]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(results))
    return md


def _load(lat: dict[str, Any]) -> str:
    """How busy the relay was made during a latency run."""
    rate = lat.get("rate_limit")
    if not rate:
        return "no rate limit (overload)"
    share, capacity = lat.get("load_share"), lat.get("capacity_polls_per_s")
    if share and capacity:
        return f"rate limit {rate:g}/s = {share:.0%} of the {capacity:g} polls/s measured"
    return f"rate limit {rate:g}/s"
