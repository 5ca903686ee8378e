"""create_app(settings): the FastAPI app; its lifespan owns the engine, HTTP clients and scheduler."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api.bodylimit import BodyLimitMiddleware
from app.api.routes import akool, health, jobs, translations
from app.config import Settings, load_settings
from app.db import Database
from app.errors import install_error_handlers
from app.migrate import upgrade_to_head
from app.runtime import Runtime
from app.store import kept

log = logging.getLogger("app")


def create_app(settings: Settings | None = None, *, driven: bool = False) -> FastAPI:
    """The app; `driven=True` starts no loops (tests step them through `app.state.runtime`)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_tokens:
            log.warning("RELAY_API_TOKENS is not set: the API is open to anyone who can reach it")
        db = Database(
            settings.database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        if settings.is_sqlite:  # the embedded default: one command runs the service
            await asyncio.to_thread(upgrade_to_head, settings.database_url)
        runtime = Runtime(settings, db, await kept.webhook_secret(db, settings.webhook_secret), driven=driven)
        app.state.runtime = runtime
        runtime.start()
        # Start-up leaves many long-lived objects; freezing them keeps the first full GC pass
        # (measured at 70-90 ms) from stalling a tick.
        gc.collect()
        gc.freeze()
        runtime.events_waiting()  # undelivered events from before a restart go out now
        runtime.jobs_registered()  # and jobs due meanwhile are polled
        try:
            yield
        finally:
            await runtime.stop()
            await db.dispose()

    app = FastAPI(
        title="akool-relay",
        version=__version__,
        summary="Polls Akool video jobs and relays their outcome to your webhook.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(akool.router)
    app.include_router(translations.router)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app on first access, not at import, so importing this
    # module (tests, tools) never reads the environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
