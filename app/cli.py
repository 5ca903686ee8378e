"""The `akool-relay` command: serve, migrate, prune, demo, simulator, webhook-secret, tenant."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from types import FrameType

from app import cli_tenants
from app.config import ConfigError, Settings, load_settings
from app.errors import RelayError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="akool-relay", description="Relay Akool job outcomes to your webhook."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API and the pollers (RELAY_HOST, RELAY_PORT)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub.add_parser("migrate", help="apply the database migrations (DATABASE_URL) and exit")
    sub.add_parser(
        "prune",
        help="delete, once, what the housekeeping loop deletes (old jobs per RELAY_RETENTION_DAYS, "
        "idempotency keys past 24 h) and say how much",
    )
    demo = sub.add_parser(
        "demo", help="simulator + relay + receiver on this machine; no Akool account needed"
    )
    demo.add_argument("--jobs", type=int, default=5, help="how many jobs to register (default 5)")
    sim = sub.add_parser("simulator", help="run the stand-in Akool API alone")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9000)
    sim.add_argument("--queue-seconds", type=float, default=2.0)
    sim.add_argument("--process-seconds", type=float, default=8.0)
    sim.add_argument("--api-key", default=None, help="require this x-api-key")
    sim.add_argument(
        "--client-id", default=None, help="getToken client id; also the IV of the pushes (Akool's webhook)"
    )
    sim.add_argument(
        "--client-secret",
        default=None,
        help="getToken client secret; pushes are encrypted with it (or with --api-key) when it is 16/24/32 bytes",
    )
    secret = sub.add_parser("webhook-secret", help="print the secret a tenant's callbacks are signed with")
    secret.add_argument("--tenant", default="default", help="the tenant's name (default: default)")
    cli_tenants.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("simulator", "demo"):
        _configure_logging("text", quiet=args.command == "demo")
    try:
        if args.command == "simulator":
            return _simulator(args)
        if args.command == "demo":
            from app.sandbox.demo import run_demo

            return asyncio.run(run_demo(jobs=args.jobs))
        settings = load_settings()
        _configure_logging(settings.log_format, quiet=False)
        if args.command == "serve":
            return _serve(settings, args.log_level)
        if args.command == "migrate":
            from app.migrate import upgrade_to_head

            upgrade_to_head(settings.database_url)
            print("database is at the latest migration")
            return 0
        if args.command == "prune":
            print(asyncio.run(_prune(settings)))
            return 0
        if args.command == "tenant":
            print(cli_tenants.run(settings, args))
            return 0
        if args.command == "webhook-secret":
            print(asyncio.run(_webhook_secret(settings, args.tenant)))
            return 0
    except ConfigError as exc:
        print(f"akool-relay: {exc}", file=sys.stderr)
        return 2
    except RelayError as exc:  # a tenant command's mistake: no such tenant, a name taken, …
        print(f"akool-relay: {exc.detail}", file=sys.stderr)
        return 1
    return 1


def _configure_logging(fmt: str, *, quiet: bool) -> None:
    """RELAY_LOG_FORMAT (text or json) on the root logger; app.logs also quiets httpx and the scheduler."""
    from app.logs import configure_logging

    configure_logging(fmt, level=logging.WARNING if quiet else logging.INFO)


def _serve(settings: Settings, log_level: str) -> int:
    import uvicorn

    from app.logs import uvicorn_log_config
    from app.main import create_app

    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn first drains open HTTP connections, then runs the lifespan shutdown; stop
            # taking new polls and deliveries now, not after that drain.
            runtime = getattr(app.state, "runtime", None)
            if runtime is not None:
                asyncio.get_running_loop().call_soon_threadsafe(runtime.quiesce)
            super().handle_exit(sig, frame)

    # uvicorn re-raises the signal that stopped it once shutdown is complete; with the default
    # SIGTERM handler that would kill us with -15 after a clean shutdown. Exit 0 instead.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        log_config=uvicorn_log_config(settings.log_format),  # uvicorn's own lines in the same format
        timeout_graceful_shutdown=15,
    )
    Server(config).run()
    return 0


def _exit_cleanly(_signum: int, _frame: object) -> None:
    sys.exit(0)


def _simulator(args: argparse.Namespace) -> int:
    from app.sandbox.simulator import SimulatorConfig, run_simulator

    config = SimulatorConfig(
        queue_seconds=args.queue_seconds,
        process_seconds=args.process_seconds,
        api_key=args.api_key,
        client_id=args.client_id,
        client_secret=args.client_secret,
    )
    print(f"Akool simulator on http://{args.host}:{args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_simulator(args.host, args.port, config))
    return 0


async def _prune(settings: Settings) -> str:
    from app.db import Database
    from app.migrate import upgrade_to_head
    from app.worker.housekeeping import Housekeeper

    if settings.is_sqlite:
        await asyncio.to_thread(upgrade_to_head, settings.database_url)
    db = Database(settings.database_url)
    try:
        deleted = await Housekeeper(settings, db).prune()
    finally:
        await db.dispose()
    kept = " (RELAY_RETENTION_DAYS is 0: every job is kept)" if settings.retention_days <= 0 else ""
    return f"deleted {deleted}{kept}"


async def _webhook_secret(settings: Settings, tenant: str) -> str:
    from app import tenancy
    from app.db import Database
    from app.migrate import upgrade_to_head

    if settings.is_sqlite:
        await asyncio.to_thread(upgrade_to_head, settings.database_url)
    db = Database(settings.database_url)
    try:
        return await tenancy.current_secret(db, settings, tenant)
    finally:
        await db.dispose()


if __name__ == "__main__":
    sys.exit(main())
