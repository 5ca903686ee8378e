"""`akool-relay demo`: simulator, relay and receiver on loopback; watch jobs finish and call back.

The simulator also pushes Akool's webhook to the relay's `/akool/webhook` on status 2, 3 and 4: the
display counts the pushes and the callbacks that followed one. A relay without that route answers
404 and the jobs finish by polling, as before.
"""

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

from app.config import ConfigError, Settings, load_settings
from app.main import create_app
from app.sandbox.pusher import PushRecord
from app.sandbox.receiver import Received, Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import Simulator, SimulatorConfig

DEMO_TIMEOUT = 120.0
EVENT_STATUS = {"job.processing": 2, "job.completed": 3, "job.failed": 4}  # callback -> pushed status


def _pushes_of(sim: Simulator, vid: str) -> str:
    """Each push of the job as `status→HTTP status` of its latest attempt (✓ for 200)."""
    latest: dict[int, PushRecord] = {p.status: p for p in sim.pusher.pushes if p.video_model_id == vid}
    return " ".join(
        f"{s}→{'✓' if p.http_status == 200 else p.http_status or 'no answer'}" for s, p in latest.items()
    )


def _push_before(sim: Simulator, callback: Received) -> PushRecord | None:
    """The push answered 200 that announced this callback's change, when it came first."""
    vid, status = callback.body["data"]["video_model_id"], EVENT_STATUS.get(callback.type)
    pushes = [
        p
        for p in sim.pusher.pushes
        if p.video_model_id == vid and p.status == status and p.http_status == 200 and p.at <= callback.at
    ]
    return pushes[0] if pushes else None


def _followed(sim: Simulator, receiver: Receiver) -> int:
    return sum(_push_before(sim, c) is not None for c in receiver.unique().values())


def _push_summary(sim: Simulator, receiver: Receiver) -> str:
    sent = sim.pusher.pushes
    pushes, ok = sum(p.attempt == 1 for p in sent), sum(p.http_status == 200 for p in sent)
    return (
        f"pushes sent: {pushes} ({ok} answered 200, {len(sent)} attempts), "
        f"callbacks that followed a push: {_followed(sim, receiver)}"
    )


def _table(jobs: list[dict[str, object]], expected: int, sim: Simulator, receiver: Receiver) -> Table:
    table = Table(
        title=f"akool-relay demo: {len(receiver.unique())}/{expected} callbacks verified",
        caption=_push_summary(sim, receiver),
    )
    for column in ("video_model_id", "status", "progress", "polls", "pushes", "delivery"):
        table.add_column(column)
    for job in jobs:
        progress = job.get("progress")
        bar = "" if progress is None else f"{'█' * (int(str(progress)) // 10):<10} {progress}%"
        vid = str(job["video_model_id"])
        table.add_row(
            vid, str(job["status"]), bar, str(job["poll_count"]), _pushes_of(sim, vid), str(job["delivery"])
        )
    return table


def _relay_settings(**env: object) -> Settings:
    """The relay's settings with AKOOL_CLIENT_ID for pushes; without it when this relay refuses it."""
    try:
        return load_settings(**env)
    except ConfigError:
        return load_settings(**{k: v for k, v in env.items() if k != "AKOOL_CLIENT_ID"})


async def run_demo(jobs: int = 5) -> int:
    console = Console()
    api_key = secrets.token_hex(16)  # 32 characters: Akool's API key is also the pushes' AES key
    client_id = f"demo-{secrets.token_hex(4)}"
    secret = "whsec_" + secrets.token_urlsafe(24)
    sim = Simulator(
        SimulatorConfig(queue_seconds=1.0, process_seconds=4.0, api_key=api_key, client_id=client_id)
    )
    receiver = Receiver(secret=secret)
    ids = [f"demo-{i}" for i in range(1, jobs)] + ["fail-demo"]  # one job that Akool fails
    with tempfile.TemporaryDirectory(prefix="akool-relay-demo-") as tmp:
        async with serve_in_background(sim.app) as akool_url, serve_in_background(receiver.app) as hook_base:
            settings = _relay_settings(
                AKOOL_API_KEY=api_key,
                AKOOL_CLIENT_ID=client_id,
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
                    f"simulated Akool at {akool_url}, relay at {relay_url}, receiver at {hook_base}; "
                    f"Akool pushes to {relay_url}/akool/webhook"
                )
                events = ["processing", "completed", "failed"]
                for vid in ids:
                    body = {"video_model_id": vid, "callback_url": f"{hook_base}/hook", "events": events}
                    (await client.post("/jobs", json=body)).raise_for_status()
                    sim.push_to(vid, f"{relay_url}/akool/webhook")  # as if created with webhookUrl
                expected = len(ids) * 2  # job.processing, then job.completed or job.failed
                printed = pushes_printed = 0
                deadline = time.monotonic() + DEMO_TIMEOUT
                with Live(console=console, refresh_per_second=8) as live:
                    while True:
                        page = (await client.get("/jobs", params={"limit": 100})).json()
                        items = sorted(page["items"], key=lambda j: j["video_model_id"])
                        live.update(_table(items, expected, sim, receiver))
                        for push in sim.pusher.pushes[pushes_printed:]:
                            if push.attempt == 1 or push.http_status == 200:
                                answer = (
                                    "no answer" if push.http_status is None else f"HTTP {push.http_status}"
                                )
                                retry = f" (attempt {push.attempt})" if push.attempt > 1 else ""
                                live.console.print(
                                    f"push     status {push.status:<8} {push.video_model_id:<10} "
                                    f"relay answered {answer}{retry}"
                                )
                        pushes_printed = len(sim.pusher.pushes)
                        for callback in receiver.accepted[printed:]:
                            data = callback.body["data"]
                            mark = "verified" if callback.verified else "NOT VERIFIED"
                            pushed = _push_before(sim, callback)
                            after = (
                                ""
                                if pushed is None
                                else f", {(callback.at - pushed.at) * 1000:.0f} ms after the push"
                            )
                            live.console.print(
                                f"callback {callback.type:<15} {data['video_model_id']:<10} {mark} "
                                f"webhook-id={callback.webhook_id}{after}"
                            )
                        printed = len(receiver.accepted)
                        finished = all(j["delivery"] == "delivered" and j["finished_at"] for j in items)
                        if len(receiver.unique()) >= expected and finished:
                            break
                        if time.monotonic() > deadline:
                            console.print("[red]demo timed out before every callback arrived[/red]")
                            return 1
                        await asyncio.sleep(0.25)
                took_pushes = any(p.http_status == 200 for p in sim.pusher.pushes)
    ok = all(c.verified for c in receiver.accepted)
    if not took_pushes:
        console.print("the relay did not take Akool's pushes: the jobs finished by polling")
    console.print(
        f"[green]all {len(receiver.unique())} callbacks arrived, signatures verified[/green]"
        if ok
        else "[red]some callbacks failed verification[/red]"
    )
    return 0 if ok else 1
