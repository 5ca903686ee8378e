"""The simulator's push side: Akool's own webhook (SPEC §1), sent when a job's status becomes 2, 3 or 4.

A job's lifecycle is computed lazily from the simulator's clock, so a background task looks at every
job that has a push target every `CHECK_INTERVAL` seconds of real time and pushes on change (a status
skipped between two looks is still pushed: a job goes through 2 on its way to 3 or 4). Tests on a
ManualClock call `await flush()` instead of waiting for that task. Each job's pushes go out one after
the other, in order; each is retried until the target answers HTTP 200, `retry_delays` apart.

Faults, on demand: `drop` (probability a push is never sent), `delay` (seconds before a push goes
out), `repeat` (the same body sent twice), `reorder` (a job's push is held and sent right after that
job's next one), `lie` (the push for status 2 says 3, with the result URL, while the job still runs).

The body is built by app.sandbox.akool_push, never by the relay's own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from app.sandbox.akool_push import encrypt_push

log = logging.getLogger(__name__)

CHECK_INTERVAL = 0.02  # seconds of real time between two looks at the pushed jobs' statuses
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)  # seconds before each retry of a push not answered 200
PUSH_TIMEOUT = 5.0
PUSH_TYPE = "video translate"  # Akool's `type` for a video translation push
PUSHED_STATUSES = (2, 3, 4)

# (video_model_id) -> (video_status, result URL) as the simulator would answer it now; None while
# the id has not started (or never exists).
StatusOf = Callable[[str], "tuple[int, str] | None"]
Credentials = Callable[[], "tuple[str, str] | None"]  # (client id, client secret) or None


class PushFaults(BaseModel):
    drop: float = Field(default=0.0, ge=0, le=1)  # probability that a push is never sent
    delay: float = Field(default=0.0, ge=0)  # seconds before each push goes out
    repeat: bool = False  # each push sent twice, the same body (a replay)
    reorder: bool = False  # a job's push held and sent right after that job's next push
    lie: bool = False  # the push for status 2 says 3 (with the result URL) while the job runs


class PushToBody(BaseModel):
    video_model_id: str = Field(min_length=1)
    url: str = Field(min_length=1)


@dataclass(slots=True)
class PushRecord:
    """One POST of a push (each retry is its own record), or a dropped push (`http_status` None)."""

    video_model_id: str
    status: int  # the status the push says
    at: float  # time.time() of the attempt (of the drop)
    http_status: int | None  # None: no answer (connection error, timeout) or dropped
    attempt: int  # 1 for the first POST of a push, 2 for its first retry, ...
    url: str  # where it went
    changed_at: float  # time.time() when the pusher saw the status change
    fault: str | None = None  # "lie", "repeat" (the second copy), "reorder" (sent late), "drop"
    error: str | None = None


@dataclass(slots=True)
class _Push:
    vid: str
    status: int  # what it says
    url: str
    body: dict[str, Any]
    changed_at: float
    fault: str | None = None


@dataclass
class Pusher:
    status_of: StatusOf
    credentials: Credentials
    result_url: Callable[[str], str]  # the URL a completed job will have (for `lie`)
    retry_delays: tuple[float, ...] = RETRY_DELAYS
    faults: PushFaults = field(default_factory=lambda: PushFaults())
    targets: dict[str, str] = field(default_factory=dict)  # video_model_id -> push URL
    pushes: list[PushRecord] = field(default_factory=list)  # every POST, in the order sent
    dropped: list[PushRecord] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._last: dict[str, int] = {}  # highest status handled per id (1 = none yet)
        self._held: dict[str, _Push] = {}  # reorder: a push waiting for its job's next one
        self._chains: dict[str, asyncio.Task[None]] = {}  # each job's last send, in order
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.Task[None] | None = None

    # -- driving ---------------------------------------------------------------------------------

    def push_to(self, video_model_id: str, url: str) -> None:
        """Push `video_model_id`'s status changes (2, 3, 4) to `url` from now on."""
        if self.credentials() is None:
            raise ValueError(
                "pushes need client_id and a 16/24/32-byte client_secret (or api_key) in SimulatorConfig"
            )
        self.targets[video_model_id] = url
        self._last.setdefault(video_model_id, 1)

    def set_faults(self, **faults: Any) -> None:
        """PushFaults' fields (ValueError when out of range); none: no fault."""
        self.faults = PushFaults(**faults)

    def check(self) -> int:
        """Look at every pushed job now and start sending what changed; how many pushes were queued."""
        queued = 0
        for vid, url in list(self.targets.items()):
            last = self._last.get(vid, 1)
            if last >= 3:
                continue
            seen = self.status_of(vid)
            if seen is None or seen[0] <= last:
                continue
            status, video_url = seen
            self._last[vid] = status
            now = time.time()
            for s in [2, status] if last < 2 and status > 2 else [status]:
                if s in PUSHED_STATUSES:
                    self._emit(vid, url, s, video_url if s == 3 else "", now)
                    queued += 1
        return queued

    async def flush(self) -> int:
        """`check()` now, then wait until every push under way is answered or given up (retries
        included; a push `reorder` holds stays held). How many pushes were queued."""
        queued = self.check()
        while pending := [t for t in self._tasks if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
        return queued

    def reset(self) -> None:
        self.pushes.clear()
        self.dropped.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "pushes": [asdict(p) for p in self.pushes],
            "pushes_sent": len(self.pushes),
            "pushes_ok": sum(p.http_status == 200 for p in self.pushes),
            "pushes_dropped": len(self.dropped),
            "pushes_held": len(self._held),
            "push_targets": len(self.targets),
            "push_faults": self.faults.model_dump(),
        }

    # -- running ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._loop, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loop = None
        self._tasks.clear()
        self._chains.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # a bug here must not stop every later push
                log.exception("simulator push check failed")
            await asyncio.sleep(CHECK_INTERVAL)

    # -- sending ---------------------------------------------------------------------------------

    def _emit(self, vid: str, url: str, status: int, video_url: str, changed_at: float) -> None:
        fault: str | None = None
        if status == 2 and self.faults.lie:
            status, video_url, fault = 3, self.result_url(vid), "lie"
        creds = self.credentials()
        if creds is None:
            return
        data = {"_id": vid, "status": status, "type": PUSH_TYPE, "url": video_url}
        push = _Push(vid, status, url, encrypt_push(data, *creds), changed_at, fault)
        if self.faults.drop > 0 and self.rng.random() < self.faults.drop:
            self.dropped.append(
                PushRecord(vid, status, time.time(), None, 0, url, changed_at, "drop", "dropped")
            )
            return
        if self.faults.reorder and vid not in self._held and status not in (3, 4):
            self._held[vid] = push  # goes out right after this job's next push
            return
        self._chain(vid, push)
        if (held := self._held.pop(vid, None)) is not None:
            held.fault = "reorder"
            self._chain(vid, held)

    def _chain(self, vid: str, push: _Push) -> None:
        previous = self._chains.get(vid)
        task = asyncio.get_running_loop().create_task(self._send_after(previous, push, self.faults.repeat))
        self._chains[vid] = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._forget(vid, done))

    def _forget(self, vid: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._chains.get(vid) is task:
            del self._chains[vid]

    async def _send_after(self, previous: asyncio.Task[None] | None, push: _Push, repeat: bool) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        if self.faults.delay > 0:
            await asyncio.sleep(self.faults.delay)
        await self._deliver(push, push.fault)
        if repeat:
            await self._deliver(push, "repeat")

    async def _deliver(self, push: _Push, fault: str | None) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=PUSH_TIMEOUT)
        for attempt in range(1, len(self.retry_delays) + 2):
            status: int | None = None
            error: str | None = None
            sent = time.time()
            try:
                response = await self._client.post(push.url, json=push.body)
                status = response.status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.pushes.append(
                PushRecord(
                    push.vid, push.status, sent, status, attempt, push.url, push.changed_at, fault, error
                )
            )
            if status == 200 or attempt > len(self.retry_delays):
                return
            await asyncio.sleep(self.retry_delays[attempt - 1])


def push_credentials(client_id: str | None, *keys: str | None) -> tuple[str, str] | None:
    """(client id, key) for pushes: the first of `keys` that is 16, 24 or 32 bytes (AES), or None.
    The simulator passes its client_secret, then its api_key: Akool's API key *is* the client secret."""
    if not client_id:
        return None
    for key in keys:
        if key is not None and len(key.encode()) in (16, 24, 32):
            return client_id, key
    return None


def push_routes(pusher: Pusher) -> APIRouter:
    """`/_sim/push_to`, `/_sim/push_faults` and `/_sim/flush_pushes`: the Python API over HTTP."""
    router = APIRouter(prefix="/_sim")

    @router.post("/push_to")
    async def push_to(body: PushToBody) -> dict[str, Any]:
        try:
            pusher.push_to(body.video_model_id, body.url)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return body.model_dump()

    @router.post("/push_faults")
    async def push_faults(body: PushFaults) -> dict[str, Any]:
        pusher.faults = body
        return {"push_faults": body.model_dump()}

    @router.post("/flush_pushes")
    async def flush_pushes() -> dict[str, Any]:
        return {"queued": await pusher.flush()}

    return router


__all__ = ["PushFaults", "PushRecord", "Pusher", "push_credentials", "push_routes"]
