"""create_app(settings): the FastAPI app; its lifespan owns the engine, HTTP clients and scheduler."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__, cursors, tenancy
from app.api.bodylimit import BodyLimitMiddleware
from app.api.routes import akool, console, deliveries, health, jobs, stats, translations
from app.api.routes import tenants as tenant_routes
from app.config import Settings, load_settings
from app.db import Database
from app.errors import install_error_handlers
from app.migrate import upgrade_to_head
from app.runtime import Runtime
from app.store import kept, tenants

log = logging.getLogger("app")


def create_app(settings: Settings | None = None, *, driven: bool = False) -> FastAPI:
    """The app; `driven=True` starts no loops (tests step them through `app.state.runtime`)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(
            settings.database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        if settings.is_sqlite:  # the embedded default: one command runs the service
            await asyncio.to_thread(upgrade_to_head, settings.database_url)
        await tenancy.apply_environment(db, settings)
        if not settings.admin_tokens and not await tenants.any_token(db):
            log.warning(
                "no API token is set (RELAY_API_TOKENS, RELAY_ADMIN_TOKENS, or a tenant's): the API is open to anyone who can reach it"
            )
        cursor_key = await kept.kept_value(db, kept.CURSOR_KEY, cursors.new_key)
        runtime = Runtime(settings, db, cursor_key=cursor_key, driven=driven)
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
    app.include_router(tenant_routes.router)
    app.include_router(deliveries.router)
    app.include_router(stats.router)
    app.include_router(console.router)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app on first access, not at import, so importing this
    # module (tests, tools) never reads the environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
