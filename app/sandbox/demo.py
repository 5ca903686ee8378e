"""`akool-relay demo`: simulator, relay and receiver on loopback; watch jobs finish and call back."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from app.config import load_settings
from app.main import create_app
from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import Simulator, SimulatorConfig

DEMO_TIMEOUT = 120.0


def _table(jobs: list[dict[str, object]], received: int, expected: int) -> Table:
    table = Table(title=f"akool-relay demo: {received}/{expected} callbacks verified")
    for column in ("video_model_id", "status", "progress", "polls", "delivery"):
        table.add_column(column)
    for job in jobs:
        progress = job.get("progress")
        bar = "" if progress is None else f"{'█' * (int(str(progress)) // 10):<10} {progress}%"
        table.add_row(
            str(job["video_model_id"]), str(job["status"]), bar, str(job["poll_count"]), str(job["delivery"])
        )
    return table


async def run_demo(jobs: int = 5) -> int:
    console = Console()
    api_key = secrets.token_hex(8)
    secret = "whsec_" + secrets.token_urlsafe(24)
    sim = Simulator(SimulatorConfig(queue_seconds=1.0, process_seconds=4.0, api_key=api_key))
    receiver = Receiver(secret=secret)
    ids = [f"demo-{i}" for i in range(1, jobs)] + ["fail-demo"]  # one job that Akool fails
    with tempfile.TemporaryDirectory(prefix="akool-relay-demo-") as tmp:
        async with serve_in_background(sim.app) as akool_url, serve_in_background(receiver.app) as hook_base:
            settings = load_settings(
                AKOOL_API_KEY=api_key,
                AKOOL_BASE_URL=akool_url,
                DATABASE_URL=f"sqlite:///{Path(tmp) / 'demo.db'}",
                RELAY_WEBHOOK_SECRET=secret,
                RELAY_ALLOW_PRIVATE_CALLBACKS=True,  # the receiver is on loopback
                RELAY_POLL_INTERVAL_MIN=0.5,
                RELAY_POLL_INTERVAL_MAX=2,
                RELAY_TICK_INTERVAL=0.2,
            )
            async with (
                serve_in_background(create_app(settings)) as relay_url,
                httpx.AsyncClient(base_url=relay_url) as client,
            ):
                console.print(
                    f"simulated Akool at {akool_url}, relay at {relay_url}, receiver at {hook_base}"
                )
                events = ["processing", "completed", "failed"]
                for vid in ids:
                    body = {"video_model_id": vid, "callback_url": f"{hook_base}/hook", "events": events}
                    (await client.post("/jobs", json=body)).raise_for_status()
                expected = len(ids) * 2  # job.processing, then job.completed or job.failed
                printed = 0
                deadline = time.monotonic() + DEMO_TIMEOUT
                with Live(console=console, refresh_per_second=8) as live:
                    while True:
                        page = (await client.get("/jobs", params={"limit": 100})).json()
                        items = sorted(page["items"], key=lambda j: j["video_model_id"])
                        live.update(_table(items, len(receiver.unique()), expected))
                        for callback in receiver.accepted[printed:]:
                            data = callback.body["data"]
                            mark = "verified" if callback.verified else "NOT VERIFIED"
                            live.console.print(
                                f"callback {callback.type:<15} {data['video_model_id']:<10} {mark} "
                                f"webhook-id={callback.webhook_id}"
                            )
                        printed = len(receiver.accepted)
                        finished = all(j["delivery"] == "delivered" and j["finished_at"] for j in items)
                        if len(receiver.unique()) >= expected and finished:
                            break
                        if time.monotonic() > deadline:
                            console.print("[red]demo timed out before every callback arrived[/red]")
                            return 1
                        await asyncio.sleep(0.25)
    ok = all(c.verified for c in receiver.accepted)
    console.print(
        f"[green]all {len(receiver.unique())} callbacks arrived, signatures verified[/green]"
        if ok
        else "[red]some callbacks failed verification[/red]"
    )
    return 0 if ok else 1
