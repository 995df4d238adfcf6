"""SSRF guard for URLs the service itself calls (webhooks, image URLs).

Only http and https; the host is resolved and every address it resolves to must be public, unless
it falls in an explicit allowlist. `GuardedBackend` checks again as it connects, and connects to the
address it checked (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore

from shared.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SHARED = ipaddress.ip_network("100.64.0.0/10")


def _refused_reason(addr: IPAddress) -> str | None:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return _refused_reason(addr.ipv4_mapped)
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local (cloud metadata)"
    if addr.is_private or (isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED):
        return "private"
    if addr.is_multicast:
        return "multicast"
    if addr.is_unspecified or addr.is_reserved or not addr.is_global:
        return "reserved"
    return None


def parse_allowlist(entries: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(e, strict=False) for e in entries]


def resolve_public(
    url: str,
    *,
    allowlist: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    param: str = "url",
) -> tuple[str, int, list[IPAddress]]:
    """Checks the URL and returns (host, port, addresses); raises InvalidRequest saying why not."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 bracket
        raise InvalidRequest(f"invalid '{param}' {url[:80]!r}: {exc}", param=param) from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(f"invalid '{param}' {url[:80]!r}: only http and https URLs are accepted", param=param)
    host = parts.hostname
    if not host:
        raise InvalidRequest(f"invalid '{param}' {url[:80]!r}: no host", param=param)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidRequest(f"invalid '{param}' {url[:80]!r}: bad port", param=param) from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InvalidRequest(f"invalid '{param}': host {host!r} does not resolve", param=param) from None
    addresses = sorted({ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}, key=str)
    allowed = list(allowlist)
    for addr in addresses:
        if any(addr in net for net in allowed):
            continue
        reason = _refused_reason(addr)
        if reason:
            raise InvalidRequest(
                f"invalid '{param}': host {host!r} resolves to {addr}, a {reason} address; only public addresses are called",
                param=param,
            )
    return host, port, addresses


class GuardedBackend(httpcore.SyncBackend):
    """Resolves, checks and connects in one step: the address connected to is one that passed the SSRF
    check, so a DNS answer that changes between the check and the connection (rebinding) cannot slip in.
    Used by webhook delivery (api/daemons/webhooks.py) and image fetching (shared/fetch.py).
    """

    def __init__(self, allowlist: Iterable[Any], *, param: str = "webhook_url") -> None:
        self.allowlist = list(allowlist)
        self.param = param

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bare = host.strip("[]")
        _, _, addresses = resolve_public(
            f"http://[{bare}]:{port}/" if ":" in bare else f"http://{bare}:{port}/", allowlist=self.allowlist, param=self.param
        )
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or httpcore.ConnectError(f"{host} has no address")
