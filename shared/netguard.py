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
# IPv6 addresses that carry an IPv4 address, and where. A translator (NAT64) or a relay (6to4, Teredo) sends
# the traffic on to that IPv4 address, so it must pass the same deny list as the address written plainly.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix: the last 32 bits are the destination
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215's local-use prefix, read as its /96 form
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # the deprecated `::a.b.c.d` form (RFC 4291)


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses inside an IPv4-mapped, IPv4-compatible, NAT64, 6to4 or Teredo address (none for others).
    Teredo carries two: its server's, and its client's (stored inverted; the standard library undoes that)."""
    if addr.ipv4_mapped is not None:
        return [addr.ipv4_mapped]
    if addr.sixtofour is not None:
        return [addr.sixtofour]
    if addr.teredo is not None:
        return list(addr.teredo)
    if addr in _NAT64 or addr in _NAT64_LOCAL or (addr in _IPV4_COMPATIBLE and int(addr) > 1):  # not :: nor ::1
        return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]
    return []


def _refused_reason(addr: IPAddress) -> str | None:
    """Why the address may not be called, as "a ... address", or None if it is public."""
    if isinstance(addr, ipaddress.IPv6Address):
        for ipv4 in _embedded_ipv4(addr):
            reason = _refused_reason(ipv4)
            if reason:
                return f"an address embedding {ipv4}, {reason}"
        if addr.ipv4_mapped is not None or addr in _NAT64:
            return None  # the IPv4 address is the destination, and a public one (a NAT64 address on an IPv6-only network)
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_link_local:
        return "a link-local (cloud metadata) address"
    if addr.is_private or addr in _SHARED or (isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local):
        return "a private address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.is_unspecified or addr.is_reserved or not addr.is_global:
        return "a reserved address"
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
                f"invalid '{param}': host {host!r} resolves to {addr}, {reason}; only public addresses are called",
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
