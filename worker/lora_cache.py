"""The worker's disk cache of LoRA files: named by sha256, verified when fetched, least recently used evicted.

The runner fills it from the bucket before a job (`ensure`); every rank's engine reads from it (`path`). The
folder may be shared by the worker processes of one host: files are written under a temporary name and renamed
into place, a use touches the file's mtime (the LRU order is the folder's own), and a file touched in the last
`GRACE_S` seconds is never evicted, so another process' job that has just fetched it can still read it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from shared.errors import InvalidRequest
from shared.schemas import JobLora
from shared.settings import LoraSettings

log = logging.getLogger("wanq.worker")

GRACE_S = 120.0
SUFFIX = ".safetensors"

Download = Callable[[str, Path], None]
"""(storage key, destination file): raises KeyError if the object is gone."""


def default_folder(settings: LoraSettings) -> Path:
    return Path(settings.cache_dir) if settings.cache_dir else Path(tempfile.gettempdir()) / "wanq-loras"


class LoraCache:
    def __init__(self, folder: Path, max_bytes: int, download: Download | None = None, *, grace_s: float = GRACE_S) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.download = download
        self.grace_s = grace_s
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @classmethod
    def from_settings(cls, settings: LoraSettings, download: Download | None = None) -> LoraCache:
        return cls(default_folder(settings), settings.cache_bytes, download)

    def file(self, sha256: str) -> Path:
        return self.folder / f"{sha256}{SUFFIX}"

    def path(self, sha256: str) -> Path:
        """The cached file (the engine's read side); InvalidRequest if this host does not have it."""
        path = self.file(sha256)
        if not path.exists():
            raise InvalidRequest(f"LoRA file {sha256[:12]}... is not in this worker's cache ({self.folder})", param="loras")
        return path

    def ensure(self, loras: Sequence[JobLora]) -> None:
        """Every file of the job on local disk, verified against its sha256; then the cache back under its size."""
        if self.download is None:
            raise RuntimeError("this LoRA cache has no download: it only reads files already cached")
        self.folder.mkdir(parents=True, exist_ok=True)
        for lora in {x.sha256: x for x in loras}.values():
            path = self.file(lora.sha256)
            if path.exists() and path.stat().st_size == lora.size_bytes:
                os.utime(path)
                self.hits += 1
                continue
            self.misses += 1
            self._fetch(lora, path)
        self.evict(keep={x.sha256 for x in loras})

    def _fetch(self, lora: JobLora, path: Path) -> None:
        assert self.download is not None
        partial = self.folder / f".{lora.sha256}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
        try:
            try:
                self.download(lora.storage_key, partial)
            except KeyError:
                raise InvalidRequest(
                    f"LoRA {lora.name!r} (sha256 {lora.sha256[:12]}...) is no longer stored: it was deleted after this "
                    "job was accepted; upload it again",
                    param="loras",
                ) from None
            digest = hashlib.sha256()
            with partial.open("rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
            if digest.hexdigest() != lora.sha256:
                raise InvalidRequest(
                    f"LoRA {lora.name!r}: the stored file's sha256 is {digest.hexdigest()}, not the {lora.sha256} it "
                    "was uploaded with (changed in storage); upload it again",
                    param="loras",
                )
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def evict(self, keep: frozenset[str] | set[str] = frozenset()) -> None:
        """Least recently used files first, never those in `keep` nor any touched in the last `grace_s` seconds."""
        entries = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        now = time.time()
        for mtime, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path.name.removesuffix(SUFFIX) in keep or now - mtime < self.grace_s:
                continue
            path.unlink(missing_ok=True)
            total -= size
            self.evictions += 1
            log.info("LoRA file evicted from the cache", extra={"file": path.name, "bytes": size})
