"""Reading `GET /v1/videos/{id}/events` in tests: the events of a stream, and a client that follows one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

import httpx

from wanq.stack import Stack


def sse_events(lines: Iterable[str]) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, parsed data) for each event in the lines."""
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


class Follower(threading.Thread):
    """One client that follows a job's event stream for as long as the server keeps it open."""

    def __init__(self, stack: Stack, video_id: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{stack.api_url}/v1/videos/{video_id}/events"
        self.headers = stack.admin_headers()
        self.events: list[tuple[str | None, dict[str, Any]]] = []
        self.opened = threading.Event()  # the first event came (or the stream failed)
        self.error: str | None = None

    @property
    def statuses(self) -> list[str]:
        return [data["status"] for name, data in self.events if name == "video"]

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=60) as response:
                name = None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        self.events.append((name, json.loads(line.removeprefix("data: "))))
                        self.opened.set()
        except httpx.HTTPError as exc:
            self.error = repr(exc)
        finally:
            self.opened.set()
