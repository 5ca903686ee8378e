"""Databases for the measurements: a fresh migrated one each, bulk inserts, counts from the rows."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import BASE_ENV, NOWHERE


class Databases:
    """A fresh, migrated database per measurement.

    Default: SQLite files in a temporary directory. With `--database-url sqlite:///PATH`: files next to
    PATH. With a PostgreSQL URL: scratch databases on that server (`akool_relay_bench_*`), dropped at
    the end; the database named in the URL is only used to connect and is left untouched.
    """

    def __init__(self, base_url: str | None) -> None:
        import sqlalchemy as sa

        self.base_url = base_url
        self.tmp = Path(tempfile.mkdtemp(prefix="akool-relay-bench-"))
        self._created: list[str] = []  # PostgreSQL scratch databases
        self._files: list[Path] = []  # SQLite files
        self.backend = "sqlite" if base_url is None else sa.make_url(base_url).get_backend_name()
        if self.backend == "postgres":
            self.backend = "postgresql"

    def fresh(self, name: str) -> str:
        import sqlalchemy as sa

        from app.migrate import upgrade_to_head

        if self.backend == "sqlite":
            if self.base_url is None:
                path = self.tmp / f"{name}.db"
            else:
                base = Path(sa.make_url(self.base_url).database or "bench.db").resolve()
                path = base.with_name(f"{base.stem}-{name}.db")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self._files.append(path)
            url = f"sqlite:///{path}"
        else:
            assert self.base_url is not None
            dbname = f"akool_relay_bench_{name}_{uuid.uuid4().hex[:6]}"
            asyncio.run(_pg_exec(self.base_url, f'CREATE DATABASE "{dbname}"'))
            self._created.append(dbname)
            url = sa.make_url(self.base_url).set(database=dbname).render_as_string(hide_password=False)
        upgrade_to_head(url)
        return url

    def cleanup(self, *, keep_logs: bool = False) -> None:
        for dbname in self._created:
            with contextlib.suppress(Exception):
                assert self.base_url is not None
                asyncio.run(_pg_exec(self.base_url, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        for path in self._files:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        if not keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)


async def _pg_exec(url: str, sql: str) -> None:
    import asyncpg
    import sqlalchemy as sa

    u = sa.make_url(url)
    conn = await asyncpg.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        database=u.database,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


OPTIONAL_COLUMNS: dict[str, Any] = {
    "video_status": None,
    "progress": None,
    "video_url": None,
    "finished_at": None,
    "last_polled_at": None,
}


async def insert_jobs(
    url: str,
    count: int,
    *,
    prefix: str,
    callback_url: str = NOWHERE,
    due_in: float = 0.0,
    job_timeout: float = 10 * 86400,
    finished_share: float = 0.0,
    finished_over: float = 0.0,
    seen: bool = False,
    chunk: int = 5000,
) -> float:
    """Bulk-insert `count` jobs through the app's own row builder; returns the seconds it took.

    Unfinished jobs fall due `due_in` seconds from now (all at once); `seen` ones are already
    `queueing` (polled once before), so polling them again changes nothing. The first
    `finished_share` of them are `completed` with one delivered callback event each, as a dashboard
    of a busy service; they finished (and their events were made and delivered) evenly over the last
    `finished_over` seconds, the newest now.
    """
    import sqlalchemy as sa
    from sqlmodel import col

    from app.db import Database
    from app.models import DEFAULT_TENANT_ID, Event, Job
    from app.schemas import JobCreate
    from app.store.jobs import new_job_row

    started = time.perf_counter()
    settings = _settings(url, RELAY_JOB_TIMEOUT=job_timeout)
    db = Database(url)
    now = datetime.now(UTC)
    finished = int(count * finished_share)
    try:
        for lo in range(0, count, chunk):
            rows = []
            for i in range(lo, min(count, lo + chunk)):
                spec = JobCreate.model_construct(
                    video_model_id=f"{prefix}{i}", callback_url=callback_url, metadata={}, events=[]
                )
                # Every row has the same keys: an executemany takes its columns from the first one.
                row = {**OPTIONAL_COLUMNS, **new_job_row(spec, DEFAULT_TENANT_ID, now, settings)}
                row["events"] = ["completed", "failed", "expired"]
                row["next_poll_at"] = now + timedelta(seconds=due_in)
                if seen:
                    row.update(
                        status="queueing", video_status=1, progress=0, poll_count=1, last_polled_at=now
                    )
                if i < finished:
                    row.update(status="completed", video_status=3, progress=100, next_poll_at=None)
                    at = now - timedelta(seconds=finished_over * (finished - 1 - i) / max(1, finished))
                    row.update(finished_at=at, delivery="delivered", poll_count=3, last_polled_at=at)
                    row["video_url"] = f"https://sim.akool.local/videos/{prefix}{i}.mp4"
                rows.append(row)
            async with db.write() as session:
                await session.execute(sa.insert(Job.metadata.tables["job"]), rows)
        if finished:
            async with db.write() as session:
                webhook_id = sa.literal("msg_bench_") + sa.cast(col(Job.id), sa.String)
                body = sa.literal('{"type":"job.completed"}')
                at = col(Job.finished_at)
                cols = ["webhook_id", "job_id", "type", "body", "state", "attempts", "created_at"]
                cols += ["delivered_at", "latency_ms"]
                picked = sa.select(
                    webhook_id, col(Job.id), sa.literal("job.completed"), body, sa.literal("delivered"),
                    sa.literal(1), at, at, sa.literal(0.0),
                ).where(col(Job.status) == "completed")  # fmt: skip
                await session.execute(sa.insert(Event).from_select(cols, picked))
    finally:
        await db.dispose()
    return time.perf_counter() - started


def _settings(url: str, **env: Any) -> Any:
    from app.config import load_settings

    values = {**BASE_ENV, "DATABASE_URL": url, **env}
    return load_settings(**{k: v for k, v in values.items() if v is not None})


async def job_counts(url: str) -> dict[str, int]:
    """From the relay's own rows: jobs polled at least once, and jobs never polled that are still due."""
    import sqlalchemy as sa
    from sqlmodel import col

    from app.db import Database
    from app.models import Job

    db = Database(url)
    count = sa.select(sa.func.count()).select_from(Job)
    try:
        async with db.read() as session:
            polled = (await session.execute(count.where(col(Job.poll_count) > 0))).scalar_one()
            waiting = (
                await session.execute(
                    count.where(col(Job.poll_count) == 0, col(Job.next_poll_at) <= datetime.now(UTC))
                )
            ).scalar_one()
        return {"polled": int(polled), "unpolled_due": int(waiting)}
    finally:
        await db.dispose()
