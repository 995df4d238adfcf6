"""Fetches a conditioning image from an http(s) URL: SSRF-guarded, no redirects, bounded size and time.

The address is checked when the request is accepted and again at connect time (GuardedBackend: the
connection goes to an address that passed the check), so DNS rebinding cannot reach a private address.
"""

from __future__ import annotations

import httpcore

from shared.errors import InvalidRequest, PayloadTooLarge
from shared.netguard import GuardedBackend, parse_allowlist, resolve_public
from shared.settings import Settings

TIMEOUT_S = 10.0


def fetch_image(url: str, settings: Settings) -> bytes:
    limit = settings.jobs.max_image_bytes
    allowlist = parse_allowlist(settings.jobs.fetch_allowlist)
    resolve_public(url, allowlist=allowlist, param="image_url")  # early, with the clearest message
    timeouts = {"connect": TIMEOUT_S, "read": TIMEOUT_S, "write": TIMEOUT_S, "pool": TIMEOUT_S}
    try:
        # httpcore never follows redirects; a 3xx is refused below like any other non-200.
        with (
            httpcore.ConnectionPool(network_backend=GuardedBackend(allowlist, param="image_url"), max_connections=1) as pool,
            pool.stream("GET", url, extensions={"timeout": timeouts}) as response,
        ):
            if response.status != 200:
                raise InvalidRequest(f"invalid 'image_url': fetching it answered HTTP {response.status}", param="image_url")
            data = bytearray()
            for chunk in response.iter_stream():
                data.extend(chunk)
                if len(data) > limit:
                    raise PayloadTooLarge(f"invalid 'image_url': image larger than {limit} bytes", param="image_url")
            return bytes(data)
    except (
        httpcore.TimeoutException,
        httpcore.NetworkError,
        httpcore.ProtocolError,
        httpcore.UnsupportedProtocol,
        OSError,
    ) as exc:
        raise InvalidRequest(f"invalid 'image_url': could not fetch it ({type(exc).__name__})", param="image_url") from None
