"""A real HTTP webhook receiver for the tests, run as its own process:

    python tests/webhook_receiver.py PORT LOGFILE

It appends every request it gets to LOGFILE as one JSON line {path, headers, body, at, status} and
answers as the query string scripts it, counting requests per path + query:
  ?codes=500,500,200     the n-th request gets the n-th code (the last one repeats); default 200
  &retry_after=3         adds `Retry-After: 3` to non-2xx answers
  &location=/elsewhere   adds a Location header (redirect tests)
  &sleep=5&slow=1        the first `slow` requests (default all) wait this long before answering

`Receiver` starts and stops it from a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_lock = threading.Lock()
_seen: Counter[str] = Counter()


class Handler(BaseHTTPRequestHandler):
    log_path = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        query = parse_qs(urlsplit(self.path).query)
        with _lock:
            n = _seen[self.path]
            _seen[self.path] += 1
        codes = [int(c) for c in query.get("codes", ["200"])[0].split(",")]
        status = codes[min(n, len(codes) - 1)]
        entry = {
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode(),
            "at": time.time(),
            "status": status,
        }
        with _lock, open(self.log_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        if "sleep" in query and n < int(query.get("slow", ["1000000"])[0]):
            time.sleep(float(query["sleep"][0]))
        self.send_response(status)
        if status >= 300 and "retry_after" in query:
            self.send_header("Retry-After", query["retry_after"][0])
        if "location" in query:
            self.send_header("Location", query["location"][0])
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class Receiver:
    """The receiver process, seen from a test: URLs to hand out and the requests it got."""

    def __init__(self, folder: Path) -> None:
        from wanq.stack import free_port, port_open, wait_until

        self.port = free_port()
        self.log = folder / "receiver.jsonl"
        self.log.touch()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.port), str(self.log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: port_open("127.0.0.1", self.port), 15, "the webhook receiver")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        # Only whole lines: the receiver may be halfway through writing the last one.
        lines = self.log.read_text().split("\n")[:-1]
        entries = [json.loads(line) for line in lines if line.strip()]
        return [e for e in entries if path is None or e["path"] == path]

    def wait_for(
        self, path: str, count: int, timeout: float = 120, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            got = [r for r in self.requests(path) if where is None or where(r)]
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver got {len(got)} of {count} request(s) on {path} within {timeout} s: {got}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


if __name__ == "__main__":
    Handler.log_path = sys.argv[2]
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
