"""The connect-time SSRF guard inside a running relay (SPEC §4): DNS rebinding does not get through.

The relay runs with RELAY_ALLOW_PRIVATE_CALLBACKS=false. Only the name service is replaced, and only
for one test hostname: the event loop's `getaddrinfo` (what app.netguard.resolve asks, and what httpx
would ask if it dialled the name itself) answers a public address for the first look-up of
`rebind.test` and loopback, where a real listener waits, for every later one. Registration, the
guard and the sender run unchanged.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.sandbox.simulator import Simulator
from tests.support.relay import RelayFactory, register

HOST = "rebind.test"
PUBLIC_IP = "93.184.216.34"  # what the name answers at registration
LOOPBACK_IP = "127.0.0.1"  # what it answers afterwards: where the listener is


@dataclass
class Listener:
    """A bare TCP listener on loopback: counts every connection, answers 200 to whatever arrives."""

    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.requests.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def listening() -> AsyncIterator[Listener]:
    listener = Listener()
    server = await asyncio.start_server(listener.handle, LOOPBACK_IP, 0)
    listener.port = server.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class RebindingResolver:
    """`loop.getaddrinfo` for HOST: PUBLIC_IP the first time, LOOPBACK_IP after; other names as usual."""

    real: Any
    answers: list[str] = field(default_factory=list)  # what each look-up of HOST got, in order

    async def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name != HOST:
            return await self.real(host, port, *args, **kwargs)
        ip = PUBLIC_IP if not self.answers else LOOPBACK_IP
        self.answers.append(ip)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port)))]


async def test_a_callback_host_rebound_to_loopback_after_registration_is_refused_at_connect(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    resolver = RebindingResolver(loop.getaddrinfo)
    monkeypatch.setattr(loop, "getaddrinfo", resolver)
    async with (
        listening() as listener,
        start_relay(driven=True, RELAY_ALLOW_PRIVATE_CALLBACKS=False, RELAY_RETRY_SCHEDULE="0,0") as r,
    ):
        assert r.settings.allow_private_callbacks is False
        callback_url = f"http://{HOST}:{listener.port}/hook"

        # Registration resolves the name once and sees a public address: accepted.
        job = await register(r, "vid-rebind-1", callback_url, events=["queueing", "completed"])
        assert job["callback_url"] == callback_url
        assert resolver.answers == [PUBLIC_IP]

        assert await r.relay.poll_due_jobs() == 1  # queueing: one event to send
        assert await r.relay.deliver_due() == 1  # the attempt is made and recorded...

        # ...but the guard resolved again when connecting, got loopback, and dialled nothing.
        assert resolver.answers == [PUBLIC_IP, LOOPBACK_IP]
        assert listener.connections == 0 and listener.requests == []
        detail = (await r.client.get("/jobs/vid-rebind-1")).json()
        [delivery] = detail["deliveries"]
        assert delivery["type"] == "job.queueing"
        assert delivery["state"] == "retrying", delivery
        [attempt] = delivery["attempts"]
        assert attempt["status_code"] is None, attempt
        assert "refusing to connect" in attempt["error"] and "SSRF guard" in attempt["error"], attempt
        assert LOOPBACK_IP not in attempt["error"]  # the internal answer is not echoed to the client
        assert detail["delivery"] == "retrying"

        # The retries (due at once: RELAY_RETRY_SCHEDULE=0,0) meet the same refusal; the event ends
        # dead, and still nothing connected.
        assert await r.relay.deliver_due() == 1
        assert await r.relay.deliver_due() == 1
        assert await r.relay.deliver_due() == 0
        detail = (await r.client.get("/jobs/vid-rebind-1")).json()
        [delivery] = detail["deliveries"]
        assert delivery["state"] == "dead", delivery
        assert [a["status_code"] for a in delivery["attempts"]] == [None] * 3
        assert all("SSRF guard" in a["error"] for a in delivery["attempts"])
        assert resolver.answers == [PUBLIC_IP] + [LOOPBACK_IP] * 3
        assert listener.connections == 0

    # The listener was reachable all along through that name: without the guard, a client that
    # resolves it would have delivered to loopback.
    async with listening() as control:
        async with httpx.AsyncClient(timeout=5) as plain:
            response = await plain.post(f"http://{HOST}:{control.port}/hook", content=b"{}")
        assert response.status_code == 200
        assert control.connections == 1
