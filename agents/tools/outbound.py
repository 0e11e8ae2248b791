"""The one HTTP client tools use: URL tools, HTTP tools, sys.http.*, site_browsing and MCP.

It refuses loopback, private, link-local, multicast, reserved and metadata addresses unless the
host is listed in CLICKY_CHATS_TOOL_ALLOWED_HOSTS. The check runs at connect time, on the addresses
DNS returned, for every connection (so for every redirect too): a name that resolves public at
check time and private at connect time (DNS rebinding) is still refused, and so are the decimal and
octal spellings of an address, since the resolver turns them into the address itself.

httpx2 (the client the openai and mcp SDKs ship) with our own network backend, rather than a
check before the request, because only the connect step sees the address actually used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore2
import httpx2

MAX_REDIRECTS = 3


class OutboundRefused(httpcore2.ConnectError):
    """A tool tried to reach an address it may not."""


def allowed_hosts() -> frozenset[str]:
    raw = os.environ.get("CLICKY_CHATS_TOOL_ALLOWED_HOSTS", "")
    return frozenset(host.strip().lower().strip("[]") for host in raw.split(",") if host.strip())


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_allowed(address: str) -> bool:
    """Only globally routable unicast addresses. An IPv6 address that carries an IPv4 one
    (IPv4-mapped, NAT64, 6to4, Teredo) is judged by the IPv4 address it reaches."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        else:
            ip = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None) or ip
    return ip.is_global and not ip.is_multicast and not ip.is_reserved and not ip.is_link_local


def decide(host: str, addresses: Iterable[str], allowed: frozenset[str] | None = None) -> list[str]:
    """The addresses a connection to `host` may use; raises OutboundRefused when none."""
    allowed = allowed_hosts() if allowed is None else allowed
    addresses = list(addresses)
    if host.lower().strip("[]") in allowed:
        return addresses
    permitted = [address for address in addresses if address_allowed(address)]
    if not permitted:
        shown = ", ".join(sorted(set(addresses))) or "no address"
        raise OutboundRefused(
            f"refused to connect to {host} ({shown}): private, loopback, link-local and metadata addresses are "
            "off limits to tools unless the host is in CLICKY_CHATS_TOOL_ALLOWED_HOSTS"
        )
    return permitted


async def resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore2.ConnectError(f"cannot resolve {host}: {exc}") from None
    return [info[4][0] for info in infos]


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """Resolves, checks, then connects to a checked address (never re-resolving the name)."""

    def __init__(self) -> None:
        self.inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore2's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        addresses = decide(host, await resolve(host, port))
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore2.ConnectError as exc:
                last = exc
        raise last or httpcore2.ConnectError(f"cannot connect to {host}")

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        raise OutboundRefused("tools may not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_client(*, timeout_s: float = 30.0, headers: dict[str, str] | None = None) -> httpx2.AsyncClient:
    """An httpx2 client whose every connection passes the address check. No proxies from the
    environment: a proxy would connect on our behalf, past the check."""
    transport = httpx2.AsyncHTTPTransport(trust_env=False)
    # httpx2 builds its pool without a way to pass a network backend; swap in one that has ours.
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=ssl.create_default_context(), max_connections=20, network_backend=GuardedBackend()
    )
    return httpx2.AsyncClient(
        transport=transport,
        timeout=timeout_s,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        headers=headers or {"User-Agent": "clicky-chats-tools"},
        trust_env=False,
    )


def check_url_scheme(url: str) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise OutboundRefused(f"only http and https URLs may be fetched, not {url.split(':', 1)[0]!r}")


async def fetch_text(
    url: str, *, max_bytes: int, timeout_s: float = 30.0, method: str = "GET", json: Any = None
) -> tuple[int, str, str]:
    """(status, content type, text capped at max_bytes) of a URL, through the guarded client."""
    check_url_scheme(url)
    async with guarded_client(timeout_s=timeout_s) as client:
        async with client.stream(method, url, json=json) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= max_bytes:
                    break
            body = b"".join(chunks)[:max_bytes]
            charset = response.charset_encoding or "utf-8"
            return response.status_code, response.headers.get("content-type", ""), body.decode(charset, "replace")
