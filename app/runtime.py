"""The running service: its loops, clients and scheduler, made at start-up and closed at shutdown.

The lifespan (main.py) owns a `Runtime`. Routes talk to it through intent methods
(`jobs_registered()`, `events_waiting()`, `readiness()`, `metrics_text()`); they never touch a loop.
Tests and burst runs drive the loops one step at a time with `poll_due_jobs()` and `deliver_due()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import generate_latest

from app import __version__, cursors, tenancy
from app.akool import AkoolClient, CreateResult
from app.akool_push import PushConfigError, PushKeys, PushNotice
from app.config import Settings
from app.cursors import Cursors
from app.db import Database
from app.metrics import Metrics
from app.models import utcnow
from app.netguard import guarded_transport
from app.store import jobs, pushes
from app.store.pushes import PushEffect
from app.store.retention import Deleted
from app.webhooks import WebhookSender
from app.worker.budget import make_budget
from app.worker.housekeeping import INTERVAL as HOUSEKEEPING_INTERVAL
from app.worker.housekeeping import Housekeeper
from app.worker.outbox import Outbox
from app.worker.poller import Poller

log = logging.getLogger(__name__)

AKOOL_POOL_SIZE = 8  # connections per Akool client (see AkoolClient)
SHUTDOWN_GRACE = 10.0  # seconds in-flight polls and deliveries get to finish on SIGTERM
ENDING_STATUSES = frozenset({3, 4})  # Akool's video_status for completed and failed


def _push_keys(settings: Settings) -> PushKeys | None:
    """The keys Akool's pushes are checked with, when AKOOL_CLIENT_ID and a usable secret are set."""
    credentials = settings.push_credentials
    if credentials is None:
        return None
    try:
        return PushKeys.of(*credentials)
    except PushConfigError as exc:  # polling works without pushes: say why they are refused
        log.warning("Akool pushes are refused (404): %s", exc)
        return None


def _keep_alive(connections: int) -> httpx.Limits:
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)


class Runtime:
    def __init__(
        self, settings: Settings, db: Database, *, cursor_key: str | None = None, driven: bool = False
    ) -> None:
        """`cursor_key`: the deployment's key for paging cursors (`kept.CURSOR_KEY`; a process of its own
        may make one up). `driven`: nothing runs by itself (no scheduler, no wakes); a test calls
        `poll_due_jobs()` and `deliver_due()` for each step."""
        self.settings = settings
        self.cursors = Cursors(cursor_key or cursors.new_key())
        self.driven = driven
        self.push_keys = _push_keys(settings)
        self.db = db
        self.metrics = Metrics()
        # Every connection kept alive, both ways: above httpx's default of 20 idle ones, each request
        # would open a new connection (measured: 208 → 676 polls/s for a bare loop at 32).
        pools = -(-settings.poll_concurrency // AKOOL_POOL_SIZE)  # AkoolClient uses them in turn
        per_pool = -(-settings.poll_concurrency // pools)
        # One TLS context for every client: each would otherwise load the CA bundle again (~0.2 s
        # apiece, most of a start-up; and once per create, which takes a fresh client).
        tls = httpx.create_ssl_context()
        self.akool_http = [
            httpx.AsyncClient(
                timeout=settings.akool_timeout,
                limits=_keep_alive(per_pool),
                headers={"user-agent": f"akool-relay/{__version__}"},
                verify=tls,
            )
            for _ in range(pools)
        ]
        self.callback_http = httpx.AsyncClient(
            transport=guarded_transport(
                allow_private=settings.allow_private_callbacks,
                limits=_keep_alive(settings.poll_concurrency),
                verify=tls,
            ),
            timeout=settings.delivery_timeout,
            follow_redirects=False,
        )
        self.outbox = Outbox(
            settings,
            db,
            WebhookSender(tenancy.secrets_of(db, settings), self.callback_http, settings.delivery_timeout),
            self.metrics,
            driven=driven,
        )
        # One Akool budget for every request this process sends (shared with the other replicas on
        # PostgreSQL): polls and getToken take their slots in the client, creates in create_translation.
        self.budget = make_budget(settings, db)
        akool = AkoolClient(settings, self.akool_http, acquire=self.budget.acquire, tls=tls)
        self.poller = Poller(settings, db, akool, self.metrics, self.outbox, self.budget, driven=driven)
        self.housekeeper = Housekeeper(settings, db)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self._ticks_running = 0
        self._ticks_idle = asyncio.Event()
        self._ticks_idle.set()

    def start(self) -> None:
        if self.driven:
            return
        # A tick that finds the previous one still running is skipped by design (max_instances=1);
        # APScheduler would log each skip as a warning.
        logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
        tick = self.settings.tick_interval
        for name, func, interval in (
            ("poll", self.poller.tick, tick),
            ("deliver", self.outbox.pump.fill, tick),
            ("housekeeping", self.housekeeper.tick, HOUSEKEEPING_INTERVAL),
        ):
            self.scheduler.add_job(
                self._counted(func),
                "interval",
                seconds=interval,
                id=name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self.scheduler.start()

    def _counted(self, tick: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
        """Wrap a tick so stop() can wait for it: cancelling a tick mid-query would strand its connection."""

        async def run() -> None:
            self._ticks_running += 1
            self._ticks_idle.clear()
            try:
                await tick()
            finally:
                self._ticks_running -= 1
                if not self._ticks_running:
                    self._ticks_idle.set()

        return run

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running)

    def jobs_registered(self) -> None:
        """New jobs are due now: poll them without waiting for the next tick."""
        self.poller.pump.wake()

    def events_waiting(self) -> None:
        """Events were queued (a redelivery, or undelivered ones at start): send them now."""
        self.outbox.pump.wake()

    async def create_translation(self, body: dict[str, Any]) -> CreateResult:
        """Ask Akool once to create a video translation (the caller recorded the attempt first). It
        waits for a request slot like any poll, and all of it ends within RELAY_AKOOL_TIMEOUT."""
        poller = self.poller
        return await poller.akool.create_translation(
            body, timeout=self.settings.akool_timeout, wait_for_slot=poller.limiter.acquire
        )

    async def push_received(self, notice: PushNotice) -> None:
        """A verified push from Akool: count it, and make its job due now when the rules let it."""
        effect = await pushes.note_push(
            self.db,
            notice.video_model_id,
            ending=notice.status in ENDING_STATUSES,
            now=utcnow(),
            min_interval=self.settings.poll_interval_min,
        )
        self.metrics.pushes.labels("unknown_id" if effect is PushEffect.UNKNOWN else "verified").inc()
        if effect is PushEffect.MADE_DUE:
            self.poller.pump.wake()

    async def poll_due_jobs(self) -> int:
        """Run-once: share health, claim one batch of due jobs, poll each and write the results."""
        return await self.poller.poll_due_jobs()

    async def deliver_due(self) -> int:
        """Run-once: claim one batch of due events, send each and record the attempts."""
        return await self.outbox.deliver_due()

    async def prune(self) -> Deleted:
        """Run-once: one housekeeping pass (SPEC §6: old jobs, idempotency keys); returns what it deleted."""
        return await self.housekeeper.prune()

    async def readiness(self) -> tuple[list[str], str]:
        """Why the service is not ready (empty when it is), and the upstream's state."""
        reasons = []
        try:
            await self.db.ping()
        except Exception as exc:
            reasons.append(f"database unavailable ({type(exc).__name__})")
        if not self.running:
            reasons.append("pollers are not running")
        health = self.poller.health
        if health.paused:
            reasons.append(f"Akool refuses our credentials: {health.reason or 'auth failed'}")
        return reasons, health.state

    async def metrics_text(self) -> bytes:
        """Prometheus text; the job and delivery gauges are read from the counts at each scrape."""
        summary = await jobs.summary(self.db, jobs.EVERYONE)
        for status, count in summary.jobs.items():
            self.metrics.jobs.labels(status).set(count)
        for state, count in summary.deliveries.items():
            self.metrics.deliveries_by_state.labels(state).set(count)
        return bytes(generate_latest(self.metrics.registry))

    def quiesce(self) -> None:
        """First step of a shutdown (on SIGTERM): no new ticks, no new claims."""
        if self.scheduler.running:
            self.scheduler.pause()
        self.poller.pump.stop_claiming()
        self.outbox.pump.stop_claiming()
        self.housekeeper.stop()

    async def stop(self) -> None:
        """Stop ticking, let in-flight work finish (bounded), release what did not, close clients."""
        self.quiesce()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ticks_idle.wait(), SHUTDOWN_GRACE)
        # Both loops have stopped claiming; what is in flight gets one shared grace period.
        await asyncio.gather(self.poller.pump.close(SHUTDOWN_GRACE), self.outbox.pump.close(SHUTDOWN_GRACE))
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self.budget.close()
        for client in self.akool_http:
            await client.aclose()
        await self.callback_http.aclose()
