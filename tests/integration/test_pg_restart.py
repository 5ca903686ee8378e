"""PostgreSQL restarted under load: two relay processes lose no job and no callback, and both are ready
again without being restarted themselves (issue 14, Tests).

`pg_ctlcluster --skip-systemctl-redirect <version> <cluster> restart` on the local cluster serving
RELAY_TEST_DATABASE_URL, while jobs are polled, callbacks delivered and new jobs registered through
both relays. Registrations refused while the server is down are the client's to repeat; every one
that was accepted must end with its callbacks delivered. Duplicates are allowed (at least once: a
callback whose attempt could not be recorded goes again) and printed.

Not for a parallel run: the restart drops every connection to the server, so any other test using it
at that moment fails. Run it in a serial run (it is marked slow). If the suite is ever run under
pytest-xdist, give this module `pytest.mark.xdist_group("postgres-server")` and run that group alone.
Skipped, with the reason, where pg_ctlcluster or the cluster is not there (RELAY_REQUIRE_POSTGRES=1
requires a server, not the right to restart it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import subprocess
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import Simulator, SimulatorConfig
from tests.support.env import PG_URL, WEBHOOK_SECRET
from tests.support.procs import RelayProcess, RelayProcs, fetch, relay_env, verify_relayed, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EVENTS = ["processing", "completed", "failed"]
FIRST_JOBS = 300  # registered before the restart
SETTINGS = {
    "RELAY_POLL_INTERVAL_MIN": 0.2,
    "RELAY_POLL_INTERVAL_MAX": 0.5,
    "RELAY_LEASE_SECONDS": 2,
    "RELAY_DELIVERY_TIMEOUT": 3,
    "RELAY_RETRY_SCHEDULE": "0.2,0.5,1,1,1,1,1,1,1,1",
    "RELAY_DB_POOL_SIZE": 10,
    "RELAY_DB_MAX_OVERFLOW": 5,
}


def local_cluster() -> tuple[str, str] | str:
    """(version, cluster name) of the local cluster serving RELAY_TEST_DATABASE_URL, else why not."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return "pg_ctlcluster is not installed (Debian's postgresql-common)"
    url = sa.make_url(PG_URL)
    if url.host not in (None, "127.0.0.1", "localhost", "::1"):
        return f"RELAY_TEST_DATABASE_URL's server ({url.host}) is not on this machine"
    listed = subprocess.run(["pg_lsclusters", "--json"], capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        return f"pg_lsclusters failed: {listed.stderr.strip()}"
    port = str(url.port or 5432)
    for cluster in json.loads(listed.stdout or "[]"):
        if str(cluster.get("port")) == port and cluster.get("running"):
            return str(cluster["version"]), str(cluster["cluster"])
    return f"no running local cluster listens on port {port}"


@pytest.fixture
def cluster() -> tuple[str, str]:
    found = local_cluster()
    if isinstance(found, str):
        pytest.skip(found)
    return found


async def restart_postgres(version: str, name: str) -> float:
    """Restart the cluster; returns the seconds it took."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        version,
        name,
        "restart",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"pg_ctlcluster restart failed: {out.decode(errors='replace')}"
    return time.monotonic() - started


async def unsettled(db_url: str) -> int:
    """Jobs still to be polled and events still to be sent (0: everything is done)."""
    [(jobs,)] = await fetch(db_url, "SELECT count(*) FROM job WHERE next_poll_at IS NOT NULL")
    [(events,)] = await fetch(db_url, "SELECT count(*) FROM event WHERE next_attempt_at IS NOT NULL")
    return int(jobs) + int(events)


async def ready(relay: RelayProcess) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        async with relay.client(timeout=5) as client:
            return (await client.get("/readyz")).status_code == 200
    return False


class Registrar:
    """Registers jobs through the relays in turn, in small batches, and keeps what each answered."""

    def __init__(self, relays: list[RelayProcess], hook: str) -> None:
        self.relays = relays
        self.hook = hook
        self.accepted: dict[str, str] = {}  # id -> expected terminal status
        self.refused = 0  # batches answered with an error, or not at all
        self.sent = 0

    async def batch(self, ids: list[str]) -> bool:
        """Register `ids`; whether the relay accepted them."""
        relay = self.relays[self.sent % len(self.relays)]
        self.sent += 1
        jobs = [{"video_model_id": v, "callback_url": self.hook, "events": EVENTS} for v in ids]
        try:
            async with relay.client(timeout=10) as client:
                response = await client.post("/jobs/batch", json={"jobs": jobs})
        except httpx.HTTPError:
            self.refused += 1
            return False
        if response.status_code != 200:
            self.refused += 1
            return False
        for vid, result in zip(ids, response.json()["results"], strict=True):
            assert result["status"] == 201, result
            self.accepted[vid] = "failed" if vid.startswith("fail") else "completed"
        return True

    async def keep_going(self, stop: asyncio.Event, prefix: str) -> None:
        """Batches of 10 every 0.2 s until `stop` is set."""
        n = 0
        while not stop.is_set():
            await self.batch([f"{'fail-' if (n + i) % 10 == 3 else ''}{prefix}-{n + i}" for i in range(10)])
            n += 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


async def test_postgres_restart_under_load_loses_nothing(
    pg_db_url: str, cluster: tuple[str, str], tmp_path: Any
) -> None:
    sim = Simulator(SimulatorConfig(queue_seconds=0.5, process_seconds=2.0, api_key="test-key"))
    rec = Receiver(secret=WEBHOOK_SECRET)
    figures: dict[str, Any] = {}
    async with (
        serve_in_background(sim.app) as sim_url,
        serve_in_background(rec.app) as rec_base,
        RelayProcs(tmp_path) as procs,
    ):
        env = relay_env(pg_db_url, sim_url, **SETTINGS)
        relays = list(await asyncio.gather(*(procs.start(f"relay{i}", env) for i in range(2))))
        pids = [r.pid for r in relays]
        registrar = Registrar(relays, rec.url(rec_base))
        for lo in range(0, FIRST_JOBS, 100):
            await registrar.batch(
                [f"{'fail-' if i % 10 == 3 else ''}before-{i}" for i in range(lo, lo + 100)]
            )
        assert len(registrar.accepted) == FIRST_JOBS, (
            f"{registrar.refused} batches refused before the restart"
        )

        async def some_finished() -> bool:
            [(n,)] = await fetch(pg_db_url, "SELECT count(*) FROM job WHERE finished_at IS NOT NULL")
            return int(n) >= FIRST_JOBS // 4

        await wait_until(some_finished, 120, f"{FIRST_JOBS // 4} finished jobs")
        [(finished_before,)] = await fetch(
            pg_db_url, "SELECT count(*) FROM job WHERE finished_at IS NOT NULL"
        )
        polls_before = len(sim.requests)

        stop = asyncio.Event()
        during = asyncio.create_task(registrar.keep_going(stop, "during"))
        await asyncio.sleep(0.5)  # registrations, polls and deliveries all in flight
        figures["restart_s"] = round(await restart_postgres(*cluster), 1)
        figures["unfinished_before_restart"] = FIRST_JOBS - int(finished_before)
        await asyncio.sleep(1.0)
        stop.set()
        await during

        for relay in relays:
            await wait_until(functools.partial(ready, relay), 60, f"{relay.name} ready (/readyz 200) again")
        # And they take new work: one more batch through each relay, at once.
        for k in range(len(relays)):
            assert await registrar.batch([f"after-{k}-{i}" for i in range(10)]), "refused after the restart"

        async def done() -> bool:
            return await unsettled(pg_db_url) == 0

        figures["settled_in"] = round(
            await wait_until(done, 180, "every job finished and every callback sent"), 1
        )
        assert [r.pid for r in relays] == pids and all(r.alive and r.starts == 1 for r in relays), (
            "a relay died or was restarted"
        )
        for relay in relays:
            assert await ready(relay), f"{relay.name} is not ready at the end"
        problems, checked = await verify_relayed(pg_db_url, rec, registrar.accepted, EVENTS)
        tracked = {vid for (vid,) in await fetch(pg_db_url, "SELECT video_model_id FROM job")}

    figures.update(
        accepted=len(registrar.accepted),
        refused_batches=registrar.refused,
        polls=len(sim.requests) - polls_before,
        events=checked["events"],
        unique_deliveries=checked["unique"],
        duplicates=checked["duplicates"],
    )
    print(f"\n[postgres restart, 2 relays] {figures}")
    assert not (set(registrar.accepted) - tracked), "an accepted job is not in the database"
    assert not problems, "\n".join([str(figures), *problems])
    assert checked["unique"] == checked["events"], figures
