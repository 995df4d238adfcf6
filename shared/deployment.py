"""The deployment marker: how a Redis that came back empty is told apart from a first start.

A deployment writes its marker twice, once: the key `deployment` in Redis and an object beside the key prefix in the
bucket (`videos.deployment` for the prefix `videos/`, outside the prefix that outputs expire under). The bucket
outlives a Redis that restarts without persistence, so:

- neither marker: a first start; whichever process looks first (the API at start-up, as a rule) writes both;
- both: all is well (one EXISTS, what the processes repeat: `/readyz`, each upkeep round, each worker heartbeat);
- the bucket's without Redis's: Redis lost its data (jobs, API keys, webhook secrets, LoRA records). Nothing is
  written: `/readyz` answers 503 naming the cause, the processes log it at critical level, and upkeep does nothing
  (its orphan sweep would otherwise take every stored object for an orphan). A deliberate fresh start (Redis
  emptied on purpose) is one start with `WANQ_MAINTENANCE_FRESH_START=true`, which writes a new marker.
"""

from __future__ import annotations

import json
import logging
import time

import redis

from shared.keys import Keys
from shared.storage import Storage

log = logging.getLogger("wanq.deployment")


class Deployment:
    def __init__(self, client: redis.Redis, keys: Keys, storage: Storage, *, fresh_start: bool = False) -> None:
        self.redis = client
        self.keys = keys
        self.storage = storage
        self.fresh_start = fresh_start
        self._lost = False

    LOST = "redis lost its data: the deployment marker is missing while the bucket's is there"
    """What `/readyz` says (public: it names no key); the critical log line says more."""

    @property
    def lost_message(self) -> str:
        return (
            f"redis lost its data: the deployment marker {self.keys.deployment} is missing while the bucket's "
            f"{self.storage.deployment_key} exists (jobs, API keys, webhook secrets and LoRA records are gone); restore "
            "Redis from its persistence, or start once with WANQ_MAINTENANCE_FRESH_START=true to begin afresh"
        )

    def problem(self) -> str | None:
        """None while the deployment is intact (writing the markers of a first start); else what is wrong. Logs the
        loss at critical level when it is first seen, and the recovery."""
        if self.redis.exists(self.keys.deployment) or self._establish():
            if self._lost:
                self._lost = False
                log.warning("the deployment marker is back: Redis holds this deployment's data again")
            return None
        if not self._lost:
            self._lost = True
            log.critical(self.lost_message)
        return self.LOST

    def _establish(self) -> bool:
        """Writes the markers where this is a first start (or a deliberate fresh one); False where Redis lost them."""
        if self.storage.exists(self.storage.deployment_key) and not self.fresh_start:
            # Another process of a first start writes the bucket's marker, then Redis's: look at Redis once more
            # before calling it a loss.
            return bool(self.redis.exists(self.keys.deployment))
        marker = json.dumps({"created_at": time.time()}).encode()
        self.storage.put_bytes(marker, self.storage.deployment_key, "application/json")
        if self.redis.set(self.keys.deployment, marker, nx=True):
            log.info("a new deployment: wrote its marker", extra={"fresh_start": self.fresh_start})
        return True
