"""The generated webhook secret (no RELAY_WEBHOOK_SECRET): made once, kept, shared, printed, used.

SPEC §4: callbacks are signed with the secret and verify with any Standard Webhooks library; the
Receiver used here verifies with `standardwebhooks` and answers 400 to a signature that does not.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import Simulator
from tests.support.env import WEBHOOK_SECRET
from tests.support.procs import RelayProcess, RelayProcs, fetch, relay_env
from tests.support.relay import RelayFactory, register, step, wait_until


async def webhook_secret_cli(db_url: str, akool_url: str) -> str:
    """`akool-relay webhook-secret` run as a subprocess on the relay's database; its one line of output."""
    script = Path(sys.executable).parent / "akool-relay"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    proc = await asyncio.create_subprocess_exec(
        *command,
        "webhook-secret",
        env=relay_env(db_url, akool_url, RELAY_WEBHOOK_SECRET=None),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")
    lines = out.decode().splitlines()
    assert len(lines) == 1, lines  # the secret alone, so `$(akool-relay webhook-secret)` works
    return lines[0]


def assert_well_formed(secret: str) -> None:
    assert secret.startswith("whsec_"), secret[:6]
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert secret != WEBHOOK_SECRET  # not the value the other tests configure


def forms_of(secret: str) -> list[str]:
    """The ways a leaked secret could be spelled: whole, its key material in base64 (padded or not)."""
    key = secret.removeprefix("whsec_")
    return [secret, key, key.rstrip("=")]


async def delivered_by(relay: RelayProcess) -> float:
    """Callback attempts this replica made that the receiver took (2xx)."""
    return await relay.metric("akool_relay_delivery_attempts_total", outcome="delivered")


async def kept_secrets(db_url: str) -> list[str]:
    """The `default` tenant's secrets in the database (RELAY_WEBHOOK_SECRET is never stored)."""
    rows = await fetch(db_url, "SELECT secret FROM tenant_secret WHERE tenant_id = 1 ORDER BY id")
    return [str(value) for (value,) in rows]


def received(rec: Receiver, vid: str) -> Callable[[], bool]:
    """Whether `rec` has accepted (hence verified) a callback for `vid`."""
    return lambda: any(c.body["data"]["video_model_id"] == vid for c in rec.accepted)


@asynccontextmanager
async def verifying_receiver(secret: str) -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver(secret=secret)
    async with serve_in_background(rec.app) as base_url:
        yield rec, rec.url(base_url)


async def test_the_secret_is_generated_once_kept_printed_and_signs_the_callbacks(
    start_relay: RelayFactory,
    db_url: str,
    stepped_simulator: tuple[Simulator, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, sim_url = stepped_simulator
    # What `akool-relay serve` emits: the root at INFO (app.logs.configure_logging), here with the
    # relay's own loggers at DEBUG too. Libraries' DEBUG output (aiosqlite logs every statement with
    # its parameters) is not switched on by any relay setting, so it is left out.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="app")
    assert await kept_secrets(db_url) == []  # a fresh database: nothing generated yet

    async with start_relay(driven=True, RELAY_WEBHOOK_SECRET=None) as first:
        assert first.settings.webhook_secret is None
        [secret] = await kept_secrets(db_url)  # made at start-up and kept
        assert_well_formed(secret)
        # The command prints the one the running relay made (it would make and keep its own otherwise).
        assert await webhook_secret_cli(db_url, sim_url) == secret
        async with verifying_receiver(secret) as (rec, hook_url):
            await register(first, "vid-gen-1", hook_url, events=["queueing"])
            await step(first)
            assert [(c.type, c.verified) for c in rec.accepted] == [("job.queueing", True)]
            assert rec.accepted[0].headers["webhook-signature"].startswith("v1,")

    # Started again on the same database: the same secret, not a new one.
    async with (
        start_relay(driven=True, RELAY_WEBHOOK_SECRET=None) as second,
        verifying_receiver(secret) as (rec, hook_url),
    ):
        await register(second, "vid-gen-2", hook_url, events=["queueing"])
        await step(second)
        assert [(c.type, c.verified) for c in rec.accepted] == [("job.queueing", True)]
    assert await kept_secrets(db_url) == [secret]

    # Nothing the relays logged, at any level, spells it.
    assert any(r.name.startswith("app") for r in caplog.records)  # the capture did see the relay
    logged = caplog.text + "".join(f"{r.getMessage()} {r.args!r} {vars(r)!r}" for r in caplog.records)
    for form in forms_of(secret):
        assert form not in logged


@pytest.mark.slow  # two `akool-relay serve` processes
async def test_replicas_started_at_the_same_moment_agree_on_one_secret(
    db_url: str, simulator: tuple[Simulator, str], tmp_path: Path
) -> None:
    _, sim_url = simulator
    env = relay_env(db_url, sim_url, RELAY_WEBHOOK_SECRET=None)
    assert "RELAY_WEBHOOK_SECRET" not in env
    async with RelayProcs(tmp_path) as procs:
        replicas: list[RelayProcess] = list(
            await asyncio.gather(procs.start("replica-a", env), procs.start("replica-b", env))
        )
        [secret] = await kept_secrets(db_url)  # two starts, one row
        assert_well_formed(secret)
        assert await webhook_secret_cli(db_url, sim_url) == secret

        # Each replica signs callbacks with that secret. Which replica sends a callback is not ours
        # to choose, but each counts the attempts it made itself (/metrics): one callback goes out
        # through either, then the replica that sent it stops and the other, now alone, sends one.
        async with verifying_receiver(secret) as (rec, hook_url):

            async def one_callback(through: RelayProcess, vid: str, counted_by: list[RelayProcess]) -> None:
                async with through.client() as client:
                    created = await client.post(
                        "/jobs",
                        json={"video_model_id": vid, "callback_url": hook_url, "events": ["queueing"]},
                    )
                assert created.status_code == 201, created.text
                await wait_until(received(rec, vid), 20, f"a verified callback for {vid}")

                async def counted() -> bool:  # a sender counts the attempt once it has read the answer
                    return sum([await delivered_by(r) for r in counted_by]) >= 1

                await wait_until(counted, 10, f"the delivery of {vid} in /metrics")

            await one_callback(replicas[0], "vid-agree-1", counted_by=replicas)
            senders = [r for r in replicas if await delivered_by(r) >= 1]
            assert len(senders) == 1, [r.name for r in senders]
            [other] = [r for r in replicas if r not in senders]
            code, _ = await senders[0].terminate()
            assert code == 0, senders[0].tail()
            await one_callback(other, "vid-agree-2", counted_by=[other])
            # The receiver answers 400 to a signature that does not verify: no attempt was refused so.
            assert await fetch(db_url, "SELECT count(*) FROM attempt WHERE status_code = 400") == [(0,)]
            assert rec.accepted and all(c.verified for c in rec.accepted)
    for relay in replicas:
        logs = relay.logs()
        assert "Application startup complete" in logs, relay.tail()
        for form in forms_of(secret):
            assert form not in logs, f"{relay.name} logged the webhook secret"
