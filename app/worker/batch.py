"""Group commit: results that many tasks produce are written together, one transaction per batch.

Every poll and every delivery attempt ends in a small write. One transaction each means a commit
and a turn of the write lock each; under load the tasks queue for the lock. Here the first result
starts a writer, and whatever arrives while it commits goes into the next transaction. A task's
`submit()` returns once its result is committed (or raises if that transaction failed; the row's
lease then expires and the work comes back). Its transactions are urgent (see Database.write): they
carry the state changes whose callbacks are waiting to go out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 128


class BatchWriter(Generic[T, R]):
    """`write(session, batch)` runs in the transaction; `then(what write returned)` after its commit."""

    def __init__(
        self,
        db: Database,
        write: Callable[[AsyncSession, list[T]], Awaitable[R]],
        then: Callable[[R], None],
    ) -> None:
        self._db = db
        self._write = write
        self._then = then
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="batch-writer")
        await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                outcome = await self._db.run(
                    partial(self._write_batch, [item for item, _ in batch]), urgent=True
                )
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(
                            exc if isinstance(exc, Exception) else RuntimeError("write cancelled")
                        )
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
                self._then(outcome)

    async def _write_batch(self, items: list[T], session: AsyncSession) -> R:
        return await self._write(session, items)
