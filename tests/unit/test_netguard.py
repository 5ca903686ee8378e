"""The SSRF guard: address classification, URL syntax, registration checks and connect-time checks.

No test resolves a real public name: public-looking names are served by a monkeypatched resolver.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx
import pytest

from app import netguard
from app.netguard import (
    GuardedNetworkBackend,
    UnsafeCallbackURL,
    check_callback_url,
    check_url_syntax,
    guarded_transport,
    is_public_address,
)
from app.sandbox.serving import serve_in_background

PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]
NON_PUBLIC = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    "192.0.0.8",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::",
    "2002:a00:1::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "gopher://example.com/",
        "example.com/hook",
        "http://",
        "http:///hook",
        "https://user:pass@example.com/hook",
        "https://user@example.com/hook",
        "http://exa mple.com/",
        "http://exa%2fmple.com/",
        "http://[::1%25eth0]/",
        "http://example.com:99999/",
    ],
)
def test_bad_url_syntax_is_refused(url: str) -> None:
    with pytest.raises(UnsafeCallbackURL):
        check_url_syntax(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "http://example.com:8080/a?b=c",
        "HTTPS://[2606:4700::1111]/",
        "https://bücher.example/",
    ],
)
def test_good_url_syntax_passes(url: str) -> None:
    check_url_syntax(url)


def test_refusal_message_gives_reason_without_credentials() -> None:
    with pytest.raises(UnsafeCallbackURL, match="credentials") as info:
        check_url_syntax("https://alice:s3cret@example.com/")
    assert "s3cret" not in str(info.value)
    assert isinstance(info.value, ValueError)


LOCAL_URLS = [
    "http://localhost/hook",
    "http://127.0.0.1/hook",
    "http://[::1]:8080/hook",
    "http://2130706433/hook",  # decimal 127.0.0.1
    "http://127.1/hook",
    "https://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]/",
]


@pytest.mark.parametrize("url", LOCAL_URLS)
async def test_check_callback_url_refuses_local_hosts(url: str) -> None:
    with pytest.raises(UnsafeCallbackURL, match="non-public"):
        await check_callback_url(url, allow_private=False)


@pytest.mark.parametrize("url", LOCAL_URLS)
async def test_allow_private_lets_local_hosts_through(url: str) -> None:
    await check_callback_url(url, allow_private=True)


async def test_allow_private_still_checks_syntax() -> None:
    with pytest.raises(UnsafeCallbackURL):
        await check_callback_url("ftp://localhost/", allow_private=True)


def fake_dns(table: dict[str, list[str]]) -> Any:
    """A stand-in for netguard.resolve: names in `table` resolve to its addresses, the rest fail."""

    async def resolve(host: str, port: int) -> list[Any]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve


async def test_public_name_passes_and_any_private_answer_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        netguard,
        "resolve",
        fake_dns(
            {
                "hooks.example": ["93.184.216.34"],
                "xn--bcher-kva.example": ["93.184.216.34"],  # resolved as dialled: IDNA-encoded
                "mixed.example": ["93.184.216.34", "10.0.0.7"],
            }
        ),
    )
    await check_callback_url("https://hooks.example/cb", allow_private=False)
    await check_callback_url("https://bücher.example/cb", allow_private=False)
    with pytest.raises(UnsafeCallbackURL, match="non-public") as info:
        await check_callback_url("https://mixed.example/cb", allow_private=False)
    assert "10.0.0.7" not in str(info.value)
    with pytest.raises(UnsafeCallbackURL, match="does not resolve"):
        await check_callback_url("https://nowhere.example/cb", allow_private=False)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    host = dict(scope["headers"]).get(b"host", b"").decode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"reached {host}".encode()})


@pytest.fixture
async def local_server() -> AsyncIterator[str]:
    async with serve_in_background(_app) as base_url:
        yield base_url


async def test_guarded_transport_refuses_loopback_literal(local_server: str) -> None:
    async with httpx.AsyncClient(transport=guarded_transport(allow_private=False)) as client:
        with pytest.raises(httpx.ConnectError, match="non-public"):
            await client.post(local_server + "/hook", json={})


async def test_dns_rebinding_is_refused_at_connect_time(
    local_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = httpx.URL(local_server).port
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # public at registration, loopback afterwards

    async def rebinding_resolve(host: str, port: int) -> list[Any]:
        assert host == "rebind.example"
        return [ipaddress.ip_address(a) for a in next(answers)]

    monkeypatch.setattr(netguard, "resolve", rebinding_resolve)
    url = f"http://rebind.example:{port}/hook"
    await check_callback_url(url, allow_private=False)  # registration sees the public answer
    async with httpx.AsyncClient(transport=guarded_transport(allow_private=False)) as client:
        with pytest.raises(httpx.ConnectError, match="non-public"):
            await client.post(url, json={})


async def test_guarded_backend_dials_the_checked_address_and_keeps_host(
    local_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend loopback is public, to show the guarded path really connects to the resolved address.
    monkeypatch.setattr(netguard, "resolve", fake_dns({"public.example": ["127.0.0.1"]}))
    monkeypatch.setattr(netguard, "is_public_address", lambda ip: True)
    port = httpx.URL(local_server).port
    async with httpx.AsyncClient(transport=guarded_transport(allow_private=False)) as client:
        response = await client.get(f"http://public.example:{port}/")
    assert response.text == f"reached public.example:{port}"


async def test_allow_private_transport_reaches_loopback(local_server: str) -> None:
    async with httpx.AsyncClient(transport=guarded_transport(allow_private=True)) as client:
        response = await client.post(local_server + "/hook", json={})
    assert response.status_code == 200


class _RecordingStream(httpcore.AsyncNetworkStream):
    def __init__(self, log: dict[str, Any]) -> None:
        self.log = log

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.log["server_hostname"] = server_hostname
        raise httpcore.ConnectError("stop here")

    async def aclose(self) -> None:
        pass


class _RecordingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.log: dict[str, Any] = {}

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.log["dialled"] = (host, port)
        return _RecordingStream(self.log)


async def test_tls_sni_keeps_the_hostname_while_dialling_the_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netguard, "resolve", fake_dns({"hooks.example": ["2606:4700::1111"]}))
    inner = _RecordingBackend()
    async with httpcore.AsyncConnectionPool(network_backend=GuardedNetworkBackend(inner)) as pool:
        with pytest.raises(httpcore.ConnectError, match="stop here"):
            await pool.request("POST", "https://hooks.example/cb")
    assert inner.log == {"dialled": ("2606:4700::1111", 443), "server_hostname": "hooks.example"}


async def test_unresolvable_name_is_a_connect_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netguard, "resolve", fake_dns({}))
    async with httpx.AsyncClient(transport=guarded_transport(allow_private=False)) as client:
        with pytest.raises(httpx.ConnectError, match="cannot resolve"):
            await client.post("http://nowhere.example/", json={})


POOL_ATTRS = ["_max_connections", "_max_keepalive_connections", "_keepalive_expiry", "_http1", "_http2"]
POOL_ATTRS += ["_retries", "_local_address", "_uds", "_socket_options", "_proxy"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {
            "limits": httpx.Limits(max_connections=7, max_keepalive_connections=3, keepalive_expiry=9),
            "retries": 2,
            "http2": False,
            "local_address": "0.0.0.0",
            "socket_options": [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)],
        },
    ],
)
def test_guarded_pool_replicates_httpx_arguments(kwargs: dict[str, Any]) -> None:
    plain: Any = httpx.AsyncHTTPTransport(**kwargs)
    guarded: Any = guarded_transport(allow_private=False, **kwargs)
    for attr in POOL_ATTRS:
        assert getattr(guarded._pool, attr) == getattr(plain._pool, attr), attr
    assert isinstance(guarded._pool._network_backend, GuardedNetworkBackend)
    assert guarded._pool._ssl_context.verify_mode == plain._pool._ssl_context.verify_mode


def test_verify_false_is_carried_over() -> None:
    guarded: Any = guarded_transport(allow_private=False, verify=False)
    assert guarded._pool._ssl_context.verify_mode == ssl.CERT_NONE


def test_allow_private_is_the_plain_transport() -> None:
    transport: Any = guarded_transport(allow_private=True)
    assert type(transport) is httpx.AsyncHTTPTransport
    assert not isinstance(transport._pool._network_backend, GuardedNetworkBackend)


@pytest.mark.parametrize("kwargs", [{"proxy": "http://proxy.internal:3128"}, {"uds": "/tmp/x.sock"}])
def test_proxy_and_uds_are_refused_when_guarding(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="proxy or a unix socket"):
        guarded_transport(allow_private=False, **kwargs)
