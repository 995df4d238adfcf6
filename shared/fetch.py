"""Fetches what a request names by URL: a conditioning image (`image_url`) or a LoRA file (`POST /v1/loras` with
`url`). SSRF-guarded, bounded in size and time.

The address is checked when the request is accepted and again at connect time (GuardedBackend: the
connection goes to an address that passed the check), so DNS rebinding cannot reach a private address.
Image URLs are fetched without following redirects. LoRA URLs may redirect (model hubs answer 302 to their
file servers): each hop is a new URL that goes through the same checks, at most `MAX_REDIRECTS` of them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO
from urllib.parse import urljoin

import httpcore

from shared.errors import InvalidRequest, PayloadTooLarge
from shared.netguard import GuardedBackend, parse_allowlist, resolve_public
from shared.settings import Settings

TIMEOUT_S = 10.0
MAX_REDIRECTS = 5
_TIMEOUTS = {"connect": TIMEOUT_S, "read": TIMEOUT_S, "write": TIMEOUT_S, "pool": TIMEOUT_S}
_NETWORK_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    OSError,
)


def fetch_image(url: str, settings: Settings) -> bytes:
    limit = settings.jobs.max_image_bytes
    allowlist = parse_allowlist(settings.jobs.fetch_allowlist)
    resolve_public(url, allowlist=allowlist, param="image_url")  # early, with the clearest message
    try:
        # httpcore never follows redirects; a 3xx is refused below like any other non-200.
        with (
            httpcore.ConnectionPool(network_backend=GuardedBackend(allowlist, param="image_url"), max_connections=1) as pool,
            pool.stream("GET", url, extensions={"timeout": _TIMEOUTS}) as response,
        ):
            if response.status != 200:
                raise InvalidRequest(f"invalid 'image_url': fetching it answered HTTP {response.status}", param="image_url")
            data = bytearray()
            for chunk in response.iter_stream():
                data.extend(chunk)
                if len(data) > limit:
                    raise PayloadTooLarge(f"invalid 'image_url': image larger than {limit} bytes", param="image_url")
            return bytes(data)
    except _NETWORK_ERRORS as exc:
        raise InvalidRequest(f"invalid 'image_url': could not fetch it ({type(exc).__name__})", param="image_url") from None


def fetch_to_file(url: str, out: IO[bytes], *, limit: int, settings: Settings, param: str = "url") -> tuple[int, str]:
    """Streams the URL's body into `out`; returns (bytes, sha256). https only, except to addresses in
    WANQ_JOBS_FETCH_ALLOWLIST (trusted internal servers); redirects followed through the same checks."""
    allowlist = parse_allowlist(settings.jobs.fetch_allowlist)
    for _ in range(MAX_REDIRECTS + 1):
        _, _, addresses = resolve_public(url, allowlist=allowlist, param=param)
        if not url.lower().startswith("https://") and not all(any(a in net for net in allowlist) for a in addresses):
            raise InvalidRequest(f"invalid '{param}' {url[:80]!r}: use an https:// URL", param=param)
        try:
            with (
                httpcore.ConnectionPool(network_backend=GuardedBackend(allowlist, param=param), max_connections=1) as pool,
                pool.stream("GET", url, extensions={"timeout": _TIMEOUTS}) as response,
            ):
                if response.status in (301, 302, 303, 307, 308):
                    location = dict((k.lower(), v) for k, v in response.headers).get(b"location")
                    if not location:
                        raise InvalidRequest(f"invalid '{param}': HTTP {response.status} without a Location", param=param)
                    url = urljoin(url, location.decode("latin-1"))
                    continue
                if response.status != 200:
                    raise InvalidRequest(f"invalid '{param}': fetching it answered HTTP {response.status}", param=param)
                digest = hashlib.sha256()
                size = 0
                for chunk in response.iter_stream():
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(
                            f"invalid '{param}': the file is larger than WANQ_LORAS_MAX_BYTES ({limit} bytes)", param=param
                        )
                    digest.update(chunk)
                    out.write(chunk)
                return size, digest.hexdigest()
        except _NETWORK_ERRORS as exc:
            raise InvalidRequest(f"invalid '{param}': could not fetch it ({type(exc).__name__})", param=param) from None
    raise InvalidRequest(f"invalid '{param}': more than {MAX_REDIRECTS} redirects", param=param)


def copy_hashed(source: IO[bytes], out: IO[bytes], *, limit: int, param: str = "file") -> tuple[int, str]:
    """Copies an uploaded file into `out`; returns (bytes, sha256); refuses past `limit`."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"invalid '{param}': the file is larger than WANQ_LORAS_MAX_BYTES ({limit} bytes)", param=param)
        digest.update(chunk)
        out.write(chunk)
    return size, digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
