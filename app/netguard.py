"""SSRF guard for callback URLs (SPEC §4).

Callback URLs must resolve to public addresses. That is checked twice: at registration
(`check_callback_url`) and again on every connection the webhook sender opens (`guarded_transport`),
where the address actually dialled is the one that was checked, so DNS rebinding does not get through.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import re
import socket
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: How long a DNS look-up may take at registration before the URL is refused.
RESOLVE_TIMEOUT = 10.0

# Non-public ranges that Python 3.11's `is_global` does not flag.
_EXTRA_BLOCKED = (
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments
    ipaddress.ip_network("192.88.99.0/24"),  # 6to4 relay anycast (deprecated)
    ipaddress.ip_network("fec0::/10"),  # site-local (deprecated)
)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_HOST_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")  # a bracketed literal; httpx has already validated it


class UnsafeCallbackURL(ValueError):
    """A callback URL the relay refuses; the message is safe to show to the client."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 addresses an IPv6 address stands for, or None when it embeds none."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.teredo is not None:
        return list(ip.teredo)  # (server, client): both must be public
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip in _IPV4_COMPATIBLE or any(ip in net for net in _NAT64):
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses; IPv6 forms embedding IPv4 are judged by it."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return all(is_public_address(v4) for v4 in embedded)
    if not ip.is_global or ip.is_private or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    return (
        not ip.is_loopback
        and not ip.is_link_local
        and not any(ip in net for net in _EXTRA_BLOCKED if net.version == ip.version)
    )


def _host(url: httpx.URL) -> str:
    """The host as httpx/httpcore will dial it: IDNA-encoded ASCII, IPv6 without brackets."""
    return url.raw_host.decode("ascii")


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise UnsafeCallbackURL("callback URL is not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeCallbackURL("callback URL must use http or https")
    if not parsed.host:
        raise UnsafeCallbackURL("callback URL has no host")
    if not (_HOST_CHARS.fullmatch(_host(parsed)) or _IPV6_CHARS.fullmatch(_host(parsed))):
        raise UnsafeCallbackURL("callback URL host is not a valid host name or IP address")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UnsafeCallbackURL("callback URL port is out of range")
    if parsed.userinfo:
        raise UnsafeCallbackURL("callback URL must not contain credentials (user:password@)")
    return parsed


def check_url_syntax(url: str) -> None:
    """Refuse anything but an http(s) URL with a host and no userinfo."""
    _parse(url)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (literal IPs too), deduplicated; OSError/UnicodeError if none."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


async def check_callback_url(url: str, *, allow_private: bool) -> None:
    """Syntax check, then (unless `allow_private`) refuse hosts resolving to any non-public address."""
    parsed = _parse(url)
    if allow_private:
        return
    host = _host(parsed)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            addresses = await resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except (OSError, UnicodeError, TimeoutError):
        raise UnsafeCallbackURL(f"callback URL host {host!r} does not resolve") from None
    if not addresses:
        raise UnsafeCallbackURL(f"callback URL host {host!r} does not resolve")
    if not all(is_public_address(ip) for ip in addresses):
        # The resolved addresses are not echoed: they may describe the relay's private network.
        raise UnsafeCallbackURL(f"callback URL host {host!r} resolves to a non-public address")


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host itself, refuses non-public answers, then dials the checked IP literal.

    TLS stays correct: httpcore passes the original hostname to `start_tls` as `server_hostname`,
    and the Host header comes from the request, not from the address dialled.
    """

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from None
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host!r}")
        if not all(is_public_address(ip) for ip in addresses):
            # Addresses are not named: the message may reach the client and the answer may be internal.
            raise httpcore.ConnectError(
                f"refusing to connect to {host!r}: it resolves to a non-public address (SSRF guard)"
            )
        last_error: Exception | None = None
        for ip in addresses:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return await self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed for callbacks (SSRF guard)")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(*, allow_private: bool, **transport_kwargs: Any) -> httpx.AsyncBaseTransport:
    """An httpx transport for callbacks that checks, at connect time, the address it actually dials.

    `transport_kwargs` are those of `httpx.AsyncHTTPTransport`. With `allow_private=True` it is exactly
    that transport. Otherwise `proxy` and `uds` are refused (the address dialled would not be the
    callback's), and the connection pool is rebuilt with the same arguments plus the guarded backend.
    """
    if allow_private:
        return httpx.AsyncHTTPTransport(**transport_kwargs)
    if transport_kwargs.get("proxy") is not None or transport_kwargs.get("uds") is not None:
        raise ValueError("guarded_transport cannot check addresses through a proxy or a unix socket")
    transport = httpx.AsyncHTTPTransport(**transport_kwargs)
    # Same defaults and same pool arguments as httpx/_transports/default.py (httpx 0.28).
    bound = inspect.signature(httpx.AsyncHTTPTransport.__init__).bind(None, **transport_kwargs)
    bound.apply_defaults()
    args = bound.arguments
    limits: httpx.Limits = args["limits"]
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(
            verify=args["verify"], cert=args["cert"], trust_env=args["trust_env"]
        ),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=args["http1"],
        http2=args["http2"],
        local_address=args["local_address"],
        retries=args["retries"],
        socket_options=args["socket_options"],
        network_backend=GuardedNetworkBackend(),
    )
    return transport
