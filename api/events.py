"""One Redis pub/sub connection per API process for every live event stream.

Each `GET /v1/videos/{id}/events` used to hold a Redis connection of its own; with a web page open on
many jobs, or many clients following theirs, that is one connection per stream. The hub keeps one
subscription per job channel, whoever listens, and one reader task that hands each message to the
streams of that job.

`subscribe` returns only once Redis has confirmed the subscription, so a state read after it cannot
miss a change published in between (a plain `PubSub.subscribe` only sends the command). If the
connection fails, every stream gets `INTERRUPTED` and ends; the next subscribe starts afresh. The
hub's client must not retry commands: redis-py's pub/sub would reconnect and subscribe again in
silence, and a stream would never learn what was published in between (its job's end included).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import redis
import redis.asyncio as aioredis

log = logging.getLogger("wanq.api")

INTERRUPTED = object()
SUBSCRIBE_TIMEOUT_S = 10.0


class EventHub:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._queues: dict[str, set[asyncio.Queue[Any]]] = {}
        self._confirming: dict[str, deque[asyncio.Future[None]]] = {}  # one future per SUBSCRIBE sent
        self._lock = asyncio.Lock()
        self.streams = 0  # listeners now (wanq_event_streams); read by the metrics thread, so a plain int

    async def subscribe(self, channel: str) -> asyncio.Queue[Any]:
        """A queue that receives each message published on `channel` from now on (raw data), or INTERRUPTED."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self.client.pubsub()
            listeners = self._queues.setdefault(channel, set())
            listeners.add(queue)
            self.streams += 1
            pending = self._confirming.setdefault(channel, deque())
            if len(listeners) == 1:
                confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                pending.append(confirmed)
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException:
                    pending.remove(confirmed)
                    self._drop(channel, queue)
                    raise
            elif pending:
                confirmed = pending[-1]  # the subscription is on its way: wait for the same confirmation
            else:
                return queue  # already confirmed
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(self._pubsub), name="wanq-event-hub")
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT_S)
        except BaseException:
            await self.unsubscribe(channel, queue)
            raise
        return queue

    async def unsubscribe(self, channel: str, queue: asyncio.Queue[Any]) -> None:
        async with self._lock:
            if self._drop(channel, queue) and self._pubsub is not None:
                with contextlib.suppress(redis.RedisError, OSError):
                    await self._pubsub.unsubscribe(channel)

    def _drop(self, channel: str, queue: asyncio.Queue[Any]) -> bool:
        """Forgets one listener; True when it was the channel's last."""
        listeners = self._queues.get(channel)
        if listeners is None or queue not in listeners:
            return False
        listeners.remove(queue)
        self.streams -= 1
        if listeners:
            return False
        del self._queues[channel]
        if not self._confirming.get(channel, True):
            del self._confirming[channel]
        return True

    async def _read(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
                if message["type"] == "subscribe":
                    pending = self._confirming.get(channel)
                    if pending:
                        confirmed = pending.popleft()
                        if not confirmed.done():
                            confirmed.set_result(None)
                        if not pending and channel not in self._queues:
                            del self._confirming[channel]
                elif message["type"] == "message":
                    for queue in list(self._queues.get(channel, ())):
                        queue.put_nowait(message["data"])
        except (redis.RedisError, OSError) as exc:
            log.warning("event streams interrupted: %s", exc)
            await self._reset(pubsub, exc)
        except Exception as exc:  # never leave streams waiting on a reader that is gone
            log.exception("event hub reader failed")
            await self._reset(pubsub, exc)
        except asyncio.CancelledError:
            await self._reset(pubsub, None)
            raise

    async def _reset(self, pubsub: Any, exc: BaseException | None) -> None:
        """Ends every stream of this connection; the next subscribe opens a new one."""
        async with self._lock:
            if self._pubsub is pubsub:
                self._pubsub = None
            for listeners in self._queues.values():
                for queue in listeners:
                    queue.put_nowait(INTERRUPTED)
            for pending in self._confirming.values():
                for confirmed in pending:
                    if not confirmed.done():
                        confirmed.set_exception(exc or redis.ConnectionError("event hub closed"))
                        confirmed.exception()  # whoever waited has seen it; nobody else need log it
            self._queues.clear()
            self._confirming.clear()
            self.streams = 0
        with contextlib.suppress(Exception):
            await pubsub.aclose()

    @property
    def channels(self) -> int:
        """Job channels subscribed now (one Redis subscription each, whatever the number of streams)."""
        return len(self._queues)

    async def close(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.client.aclose()
