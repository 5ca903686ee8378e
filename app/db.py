"""Engine and sessions. URL normalisation picks the async driver for the user.

- `sqlite:///PATH` → aiosqlite, WAL, and writes that take the lock up front (`BEGIN IMMEDIATE`),
  serialised in-process by an asyncio lock so writers queue in the event loop, not in SQLite's
  sleep-and-retry busy handler. Urgent writers (a client waiting, a poll result or attempt record on
  a callback's way out) go before background bookkeeping (claims, releases, health) in that queue.
- `postgresql://`, `postgres://`, `postgresql+asyncpg://` → asyncpg. asyncpg over psycopg 3 because it
  is the faster driver under SQLAlchemy's asyncio extension and needs no libpq on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.config import is_sqlite_url

log = logging.getLogger(__name__)
R = TypeVar("R")

# PostgreSQL aborts one transaction of a deadlock (40P01) or of a serialization conflict (40001); the
# others go on, and the aborted one may simply run again.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
TRANSACTION_TRIES = 3


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def async_url(url: str) -> sa.URL:
    """The user's URL with the async driver we ship for its database."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql://…")


class WriteLock:
    """SQLite's one writer, as a FIFO lock with two queues: urgent waiters are served first.

    On release the lock passes straight to the next waiter (no barging), so a waiter is never
    overtaken by a newcomer of its own class. Measured on the latency benchmark: with one queue, a
    poll result that would produce a callback waited ~20 ms (p50) for the lock behind claims and
    attempt records. Strict priority: claims wait while urgent writes keep coming, which also slows
    the polling that produces them.
    Needed by: `make bench`'s callback latency at the held load (p50 ≤ 20 ms): with one queue, a poll
    result carrying a callback waited 19 ms p50 for the lock, about the whole budget.
    """

    def __init__(self) -> None:
        self._locked = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    async def acquire(self, *, urgent: bool) -> None:
        if not self._locked:
            self._locked = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed the lock as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # release() may have dropped it already
                    queue.remove(waiter)
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._normal):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # stays locked: it is theirs now
                    return
        self._locked = False

    @contextlib.asynccontextmanager
    async def held(self, *, urgent: bool) -> AsyncIterator[None]:
        await self.acquire(urgent=urgent)
        try:
            yield
        finally:
            self.release()


class Database:
    """Owns the engines; `write()` and `read()` hand out sessions with the right transaction mode."""

    def __init__(self, url: str, *, pool_size: int = 10, max_overflow: int = 10) -> None:
        self.url = async_url(url)
        self.is_sqlite = is_sqlite_url(url)
        self._write_lock = WriteLock() if self.is_sqlite else None
        if self.is_sqlite:
            self.engine = self._sqlite_engine(immediate=True)
            self.read_engine = self._sqlite_engine(immediate=False)
        else:
            self.engine = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_pre_ping=True,
                # Parameters carry the generated webhook secret and clients' metadata: never in an
                # error message or a log line.
                hide_parameters=True,
            )
            self.read_engine = self.engine
        self._write = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read = async_sessionmaker(self.read_engine, expire_on_commit=False)

    def _sqlite_engine(self, *, immediate: bool) -> AsyncEngine:
        engine = create_async_engine(self.url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let us issue BEGIN ourselves (pysqlite's implicit transactions are not what we want).
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @contextlib.asynccontextmanager
    async def write(self, *, urgent: bool = False) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits when the block ends (rolls back on error).

        `urgent`: someone waits on this write (an API client, a callback to send); on SQLite it goes
        before background writes waiting for the lock. PostgreSQL has no such queue.
        """
        lock = self._write_lock.held(urgent=urgent) if self._write_lock else contextlib.nullcontext()
        async with lock, self._write() as session, session.begin():
            yield session

    async def run(self, work: Callable[[AsyncSession], Awaitable[R]], *, urgent: bool = False) -> R:
        """`work(session)` in a write transaction; run again when PostgreSQL aborted it to break a
        deadlock (concurrent writers from several replicas can form one; see migration 0003)."""
        for attempt in range(1, TRANSACTION_TRIES + 1):
            try:
                async with self.write(urgent=urgent) as session:
                    return await work(session)
            except DBAPIError as exc:
                if attempt == TRANSACTION_TRIES or not is_retryable(exc):
                    raise
                log.info("transaction aborted by the database (%s); running it again", exc.orig)
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session whose statements all see one snapshot: a job's events and their attempts read
        in two queries must agree (under READ COMMITTED an attempt could appear beside the event
        state it replaced). SQLite's read transaction is a snapshot already."""
        async with self._read() as session:
            if not self.is_sqlite:
                await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    async def ping(self) -> None:
        async with self.read_engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
