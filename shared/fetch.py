"""Fetches a conditioning image from an https URL: SSRF-guarded, no redirects, bounded size and time."""

from __future__ import annotations

import httpx

from shared.errors import InvalidRequest, PayloadTooLarge
from shared.netguard import parse_allowlist, resolve_public
from shared.settings import Settings


def fetch_image(url: str, settings: Settings) -> bytes:
    limit = settings.jobs.max_image_bytes
    resolve_public(url, allowlist=parse_allowlist(settings.jobs.fetch_allowlist), param="image_url")
    try:
        with httpx.Client(timeout=10.0, follow_redirects=False) as client, client.stream("GET", url) as response:
            if response.status_code != 200:
                raise InvalidRequest(f"invalid 'image_url': fetching it answered HTTP {response.status_code}", param="image_url")
            data = bytearray()
            for chunk in response.iter_bytes():
                data.extend(chunk)
                if len(data) > limit:
                    raise PayloadTooLarge(f"invalid 'image_url': image larger than {limit} bytes", param="image_url")
            return bytes(data)
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"invalid 'image_url': could not fetch it ({type(exc).__name__})", param="image_url") from None
