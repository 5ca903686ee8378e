"""Helper servers, each in its own process so its CPU time is its own: `python -m benchmarks.procs KIND`.

Each prints `READY <url>` on stdout once it listens and runs until SIGTERM.

- simulator    the project's Akool simulator (access log off: a line per request would cost the
               simulator more than answering)
- receiver     the project's callback receiver, plus `GET /_received` listing what it accepted
- relay        `create_app(load_settings(**env))`, the service as `akool-relay serve` runs it
- bare-poller  the ceiling: C workers, one shared httpx.AsyncClient, GET infobymodelid + parse JSON
- ticker       a 10 ms lag ticker alone: the machine's own share of any lag figure (prints RESULT)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import signal
from typing import Any

import httpx


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _ready(url: str) -> None:
    print(f"READY {url}", flush=True)


async def simulator(args: argparse.Namespace) -> None:
    from app.sandbox.serving import serve_in_background
    from app.sandbox.simulator import Simulator, SimulatorConfig
    from app.sandbox.workload import Workload

    config = SimulatorConfig(
        queue_seconds=args.queue_seconds,
        process_seconds=args.process_seconds,
        api_key=args.api_key,
        client_id=args.client_id,  # with a 16/24/32-byte api key: the simulator pushes
        workload=Workload.parse(args.workload) if args.workload else None,
    )
    sim = Simulator(config)
    async with serve_in_background(sim.app, log_level="warning") as url:
        _ready(url)
        await _until_terminated()


async def receiver(args: argparse.Namespace) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from app.sandbox.receiver import Receiver
    from app.sandbox.serving import serve_in_background

    rec = Receiver(secret=args.secret)

    async def received(_: Request) -> JSONResponse:
        rows = [
            [r.webhook_id, r.type, r.body.get("data", {}).get("video_model_id"), r.at] for r in rec.accepted
        ]
        return JSONResponse({"accepted": rows, "attempts": len(rec.attempts)})

    app = Starlette(routes=[Route("/_received", received, methods=["GET"]), Mount("/", app=rec.app)])
    async with serve_in_background(app, log_level="warning") as url:
        _ready(url)
        await _until_terminated()


async def relay(args: argparse.Namespace) -> None:
    from app.config import load_settings
    from app.main import create_app
    from app.sandbox.serving import serve_in_background

    env: dict[str, Any] = json.loads(args.env or "{}")
    settings = load_settings(**{k: v for k, v in env.items() if v is not None})
    async with serve_in_background(create_app(settings), log_level="warning") as url:
        _ready(url)
        await _until_terminated()


async def bare_poller(args: argparse.Namespace) -> None:
    """The ceiling: the least any poller must do per poll (send the GET, read and parse the answer)."""
    from app.akool import INFO_PATH

    ids = itertools.cycle([f"{args.prefix}{i}" for i in range(args.count)])
    # One client, every connection kept alive: the ceiling as the benchmark issue defines it.
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    headers = {"x-api-key": args.api_key}
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=10, headers=headers) as client:

        async def worker() -> None:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(INFO_PATH, params={"video_model_id": next(ids)})
                    response.json()

        workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
        _ready(args.url)
        await _until_terminated()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def ticker(args: argparse.Namespace) -> None:
    """The control for lag figures: the same 10 ms ticker in a process that does nothing else.

    Its worst lag is what the machine (other processes competing for the CPU) adds on its own.
    """
    from benchmarks.common import LagMonitor

    lag = LagMonitor().start()
    _ready("-")
    await _until_terminated()
    print("RESULT " + json.dumps(await lag.stop()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.procs")
    sub = parser.add_subparsers(dest="kind", required=True)
    sim = sub.add_parser("simulator")
    sim.add_argument("--queue-seconds", type=float, default=1.0)
    sim.add_argument("--process-seconds", type=float, default=3.0)
    sim.add_argument("--api-key", default=None)
    sim.add_argument("--client-id", default=None)
    sim.add_argument(
        "--workload", default=None, help="lifelike jobs, e.g. lifelike:seed=1:duration=uniform(20,50)"
    )
    rec = sub.add_parser("receiver")
    rec.add_argument("--secret", default=None)
    rel = sub.add_parser("relay")
    rel.add_argument("--env", default="{}")
    sub.add_parser("ticker")
    bare = sub.add_parser("bare-poller")
    bare.add_argument("--url", required=True)
    bare.add_argument("--concurrency", type=int, default=32)
    bare.add_argument("--prefix", default="poll-")
    bare.add_argument("--count", type=int, default=1000)
    bare.add_argument("--api-key", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("httpx", "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    runner = {
        "simulator": simulator,
        "receiver": receiver,
        "relay": relay,
        "bare-poller": bare_poller,
        "ticker": ticker,
    }
    asyncio.run(runner[args.kind](args))


if __name__ == "__main__":
    main()
