"""The running service's parts, made at start-up and closed at shutdown (owned by the lifespan)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable

import httpx
import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.dialects import postgresql, sqlite

from app import __version__
from app.akool import AkoolClient
from app.config import Settings
from app.db import Database
from app.metrics import Metrics
from app.models import Setting
from app.netguard import guarded_transport
from app.webhooks import WebhookSender
from app.worker.outbox import Outbox
from app.worker.poller import Poller

log = logging.getLogger(__name__)

AKOOL_POOL_SIZE = 8  # connections per Akool client (see AkoolClient)
SHUTDOWN_GRACE = 10.0  # seconds in-flight polls and deliveries get to finish on SIGTERM
WEBHOOK_SECRET_KEY = "webhook_secret"


async def ensure_webhook_secret(db: Database, settings: Settings) -> str:
    """RELAY_WEBHOOK_SECRET, or the one generated at first start and kept in the database."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    generated = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    dialect = postgresql if db.url.get_backend_name() == "postgresql" else sqlite
    async with db.write() as session:
        # Several replicas may start at once: the first insert wins and everyone reads it back.
        await session.execute(
            dialect.insert(Setting).values(key=WEBHOOK_SECRET_KEY, value=generated).on_conflict_do_nothing()
        )
        value = (
            await session.execute(sa.select(Setting.value).where(Setting.key == WEBHOOK_SECRET_KEY))
        ).scalar_one()
    return str(value)


def _keep_alive(connections: int) -> httpx.Limits:
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)


class Relay:
    def __init__(self, settings: Settings, db: Database, webhook_secret: str) -> None:
        self.settings = settings
        self.db = db
        self.metrics = Metrics()
        # Every connection kept alive, both ways: above httpx's default of 20 idle ones, each request
        # would open a new connection (measured: 208 → 676 polls/s for a bare loop at 32).
        pools = -(-settings.poll_concurrency // AKOOL_POOL_SIZE)  # AkoolClient uses them in turn
        per_pool = -(-settings.poll_concurrency // pools)
        self.akool_http = [
            httpx.AsyncClient(
                timeout=settings.akool_timeout,
                limits=_keep_alive(per_pool),
                headers={"user-agent": f"akool-relay/{__version__}"},
            )
            for _ in range(pools)
        ]
        self.callback_http = httpx.AsyncClient(
            transport=guarded_transport(
                allow_private=settings.allow_private_callbacks, limits=_keep_alive(settings.poll_concurrency)
            ),
            timeout=settings.delivery_timeout,
            follow_redirects=False,
        )
        self.outbox = Outbox(
            settings,
            db,
            WebhookSender(webhook_secret, self.callback_http, settings.delivery_timeout),
            self.metrics,
        )
        self.poller = Poller(settings, db, AkoolClient(settings, self.akool_http), self.metrics, self.outbox)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self._ticks_running = 0
        self._ticks_idle = asyncio.Event()
        self._ticks_idle.set()

    def start(self) -> None:
        # A tick that finds the previous one still running is skipped by design (max_instances=1);
        # APScheduler would log each skip as a warning.
        logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
        interval = self.settings.tick_interval
        for name, func in (("poll", self.poller.tick), ("deliver", self.outbox.pump.fill)):
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

    def quiesce(self) -> None:
        """First step of a shutdown (on SIGTERM): no new ticks, no new claims."""
        if self.scheduler.running:
            self.scheduler.pause()
        self.poller.pump.stop_claiming()
        self.outbox.pump.stop_claiming()

    async def stop(self) -> None:
        """Stop ticking, let in-flight work finish (bounded), release what did not, close clients."""
        self.quiesce()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ticks_idle.wait(), SHUTDOWN_GRACE)
        # Both loops have stopped claiming; what is in flight gets one shared grace period.
        await asyncio.gather(self.poller.pump.close(SHUTDOWN_GRACE), self.outbox.pump.close(SHUTDOWN_GRACE))
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for client in self.akool_http:
            await client.aclose()
        await self.callback_http.aclose()
