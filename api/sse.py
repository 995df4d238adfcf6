"""`GET /v1/videos/{id}/events`: a job's changes as Server-Sent Events, from its Redis channel (api/events.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from api import jobs
from api.events import INTERRUPTED
from api.services import Services
from shared.schemas import JobRecord
from shared.video import Video


async def video_events(record: JobRecord, request: Request, services: Services) -> StreamingResponse:
    video_id = record.id
    channel = services.store.keys.events(video_id)
    # Subscribed (confirmed by Redis) before reading the current state, so no change can fall between the
    # two. Both happen before the 200 goes out: an unreachable Redis here is a plain 503, not a cut stream.
    updates = await services.events.subscribe(channel)
    try:
        current = await asyncio.to_thread(services.store.get, video_id) or record
        first = _sse(await jobs.avideo_object(services, current))
    except BaseException:
        await services.events.unsubscribe(channel, updates)
        raise

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield first
            # Messages published between the subscribe and the read above are older than what was sent.
            sent_version = current.version
            preview_step = current.preview_step
            if current.status.is_terminal():
                return
            idle = 0.0
            while not await request.is_disconnected():
                try:
                    data = await asyncio.wait_for(updates.get(), timeout=1.0)
                except TimeoutError:
                    idle += 1.0
                    if idle >= 15.0:
                        idle = 0.0
                        yield b": keep-alive\n\n"
                    continue
                if data is INTERRUPTED:
                    # Redis went away mid-stream: end the stream cleanly and say why; the client reconnects
                    # (EventSource does by itself after `retry` ms) and first gets the state as it is then.
                    yield _sse_interrupted("store_unavailable", "The job store is unreachable; reconnect to resume.")
                    return
                idle = 0.0
                update = JobRecord.model_validate_json(data)
                if update.version <= sent_version:
                    continue
                sent_version = update.version
                video = Video.of(update)
                if update.preview_step is not None and update.preview_step != preview_step:
                    preview_step = update.preview_step
                    yield _sse(video, event="video.preview")
                else:
                    yield _sse(video)
                if update.status.is_terminal():
                    return
        finally:
            await services.events.unsubscribe(channel, updates)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse_interrupted(code: str, message: str) -> bytes:
    """The last event of a stream the server ends early: why, in OpenAI's error shape. (Not named `error`,
    which a browser's EventSource reserves for its own connection errors.)"""
    body = json.dumps({"error": {"code": code, "message": message}})
    return f"retry: 2000\nevent: interrupted\ndata: {body}\n\n".encode()


def _sse(video: Video, *, event: str = "video") -> bytes:
    """One event: `video` for every change of the job, `video.preview` for the change that brought a new preview
    (the same video object, its preview_step the new preview's)."""
    ident = f"{video.status.value}-{video.progress}-{video.step}" + (f"-p{video.preview_step}" if event != "video" else "")
    return f"event: {event}\nid: {ident}\ndata: {json.dumps(video.dump())}\n\n".encode()
