"""A small typed Python client for a wanq server: submit, extend, remix, follow live events, wait, download, cancel,
list, delete; and images.

    from wanq.client import Client

    with Client("http://127.0.0.1:8000", api_key="wq_...") as client:
        video = client.submit("a red fox in the snow", model="wan2.2-ti2v-5b", size="1280x704", seconds=5)
        for event in client.events(video["id"]):  # one video object per change, until a final status
            print(event["status"], event["stage"], event["progress"])
        client.download(video["id"], "fox.mp4")

        draft = client.submit("a red fox in the snow", preview_every=5, decoder="tiny")  # previews; a quick draft
        for shown in client.previews(draft["id"]):  # each new preview as it is stored, until the job ends
            client.download_preview(draft["id"], f"preview_step{shown['preview_step']:03d}.mp4")

        three = client.submit("a red fox in the snow", n=3)  # 3 jobs, seeds seed, seed+1, seed+2 (or seeds=[...])
        for final in client.wait_all(video_ids(three)):
            client.download(final["id"], f"{final['id']}.mp4")

Every failure is a `WanqClientError`: `ServerUnreachable` when nothing answers at the URL, `APIError` (with the HTTP
status and the server's OpenAI-style `code`, `param` and `message`) when the server refuses.
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

Video = dict[str, Any]
"""The server's video object: OpenAI's Video fields (id, status, progress, ...) plus wanq's (stage, step, ...)."""
Variant = Literal["video", "thumbnail", "spritesheet", "image", "preview"]
"""`preview`: the latest preview MP4 of a job that asked for previews (`preview_every`), while it runs and after."""

TERMINAL = frozenset({"completed", "failed", "canceled"})
# The server sends a keep-alive comment every 15 s on an idle stream; silence for longer means a dead connection.
_SSE_READ_TIMEOUT_S = 60.0
_SSE_RECONNECTS = 5


class WanqClientError(Exception):
    """Base of everything this client raises."""


class ServerUnreachable(WanqClientError):
    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"no server answers at {url} ({detail})")
        self.url = url


class APIError(WanqClientError):
    """The server answered with an error: its HTTP status and OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after


def _api_error(response: httpx.Response) -> APIError:
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        error = None
    if not isinstance(error, dict):
        # Not one of ours (a proxy, another program on the port): its status line and a glimpse of the body.
        error = {"message": f"HTTP {response.status_code} {response.reason_phrase}: {response.text[:200]}".rstrip(": ")}
    retry_after = response.headers.get("retry-after")
    return APIError(
        response.status_code,
        str(error.get("message") or response.reason_phrase),
        error.get("code"),
        error.get("param"),
        float(retry_after) if retry_after and retry_after.isascii() and retry_after.replace(".", "", 1).isdigit() else None,
    )


class _Interrupted(Exception):
    """The server ended an event stream early (`event: interrupted`); `events` reconnects."""

    def __init__(self, error: APIError) -> None:
        super().__init__(str(error))
        self.error = error


class Client:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Plumbing ----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return self._check(response).json()

    def _check(self, response: httpx.Response) -> httpx.Response:
        """The response when it succeeded, else the server's error as an APIError."""
        if not response.is_success:
            raise _api_error(response)
        return response

    def _unreachable(self, exc: httpx.TransportError) -> WanqClientError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ServerUnreachable(self.base_url, "connection refused or timed out")
        return WanqClientError(f"network error talking to {self.base_url}: {exc.__class__.__name__} {exc}")

    # The API -----------------------------------------------------------------------------------
    def submit(
        self,
        prompt: str,
        *,
        model: str | None = None,
        size: str | None = None,
        seconds: float | None = None,
        seed: int | None = None,
        image: str | Path | None = None,
        idempotency_key: str | None = None,
        n: int | None = None,
        seeds: Sequence[int] | None = None,
        **fields: Any,
    ) -> Video:
        """Creates a job and returns it (status "queued").

        `n` (a wanq extension; OpenAI's videos API has none): n jobs in one atomic step, all or none, with seeds `seed,
        seed+1, ...` or the explicit `seeds` (n of them). The answer is then the first job's video object plus
        `video_ids`, all n ids in seed order (`video_ids(answer)`); `wait_all` follows them.

        `fields` are the other create fields: num_frames, num_inference_steps, fps, negative_prompt, guidance_scale,
        webhook_url, loras=[{"name": ..., "strength": ..., "expert": ...}], preview_every (a preview every N steps:
        `previews`), decoder ("full" or "tiny", a quick draft), interpolate and upscale (1, 2 or 4: smoother or larger
        output, where the model's workers can), ... (None values are dropped, so the model's
        defaults apply). `image` is a file sent as the first frame (`input_reference`, multipart)."""
        seed_list = None if seeds is None else [int(s) for s in seeds]
        given = {"model": model, "size": size, "seconds": seconds, "seed": seed, "n": n, "seeds": seed_list, **fields}
        body = {"prompt": prompt, **{k: v for k, v in given.items() if v is not None}}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if image is None:
            return self._request("POST", "/v1/videos", json=body, headers=headers)  # type: ignore[no-any-return]
        path = Path(image)
        # Form fields are strings: a list (webhook_events) goes as the same field repeated; `loras`, an object (cache)
        # and a boolean (cache=False) as JSON text, as the server reads them.
        data = {
            k: json.dumps(v)
            if k == "loras" or isinstance(v, dict | bool)
            else [str(x) for x in v]
            if isinstance(v, list)
            else str(v)
            for k, v in body.items()
        }
        with path.open("rb") as fh:
            files = {"input_reference": (path.name, fh, "application/octet-stream")}
            return self._request("POST", "/v1/videos", data=data, files=files, headers=headers)  # type: ignore[no-any-return]

    def extend(
        self,
        video_id: str,
        prompt: str,
        *,
        seconds: float | None = None,
        model: str | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Video:
        """A job that continues the completed video `video_id` from its last frame; its video is the whole one.

        `seconds` (or `num_frames`) is the new part's length; size and fps are the source's; `model` must take an
        image (default: the source's); other `fields` as for `submit` (omitted: the source's, with the same model)."""
        given = {"seconds": seconds, "model": model, **fields}
        body = {"video": {"id": video_id}, "prompt": prompt, **{k: v for k, v in given.items() if v is not None}}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/v1/videos/extensions", json=body, headers=headers)  # type: ignore[no-any-return]

    def remix(self, video_id: str, prompt: str, **fields: Any) -> Video:
        """A job with the video's parameters, seed and image, and a new prompt. `fields` may replace some of them:
        decoder (a draft remixed with "full"), preview_every, interpolate, upscale (None values are dropped)."""
        body = {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
        return self._request("POST", f"/v1/videos/{_segment(video_id)}/remix", json=body)  # type: ignore[no-any-return]

    def images(
        self,
        prompt: str,
        *,
        n: int | None = None,
        model: str | None = None,
        size: str | None = None,
        seed: int | None = None,
        response_format: Literal["b64_json", "url"] = "b64_json",
        **fields: Any,
    ) -> dict[str, Any]:
        """POST /v1/images/generations. Done within the server's wait: `{"data": [{"b64_json" or "url", "id",
        "seed"}, ...]}`; otherwise (HTTP 202) `{"status": "in_progress", "ids": [...]}`: follow each with `wait`,
        then `content(id)` is its PNG."""
        given = {"n": n, "model": model, "size": size, "seed": seed, "response_format": response_format, **fields}
        body = {"prompt": prompt, **{k: v for k, v in given.items() if v is not None}}
        # The server may hold the request for its wait limit (WANQ_IMAGES_WAIT_S, up to 600 s).
        return self._request("POST", "/v1/images/generations", json=body, timeout=httpx.Timeout(30.0, read=630.0))  # type: ignore[no-any-return]

    def get(self, video_id: str) -> Video:
        return self._request("GET", f"/v1/videos/{_segment(video_id)}")  # type: ignore[no-any-return]

    def list(self, *, limit: int = 20, after: str | None = None, order: Literal["asc", "desc"] = "desc") -> dict[str, Any]:
        """One page: {"data": [video, ...], "has_more": bool, "last_id": ...}; pass `after=last_id` for the next."""
        params: dict[str, Any] = {"limit": limit, "order": order}
        if after:
            params["after"] = after
        return self._request("GET", "/v1/videos", params=params)  # type: ignore[no-any-return]

    def cancel(self, video_id: str) -> Video:
        """A queued job ends at once; a running one gets `cancel_requested` and stops at its next step."""
        return self._request("POST", f"/v1/videos/{_segment(video_id)}/cancel")  # type: ignore[no-any-return]

    def delete(self, video_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/videos/{_segment(video_id)}")  # type: ignore[no-any-return]

    def models(self) -> builtins.list[dict[str, Any]]:  # `list` here is the method above
        return self._request("GET", "/v1/models")["data"]  # type: ignore[no-any-return]

    def events(self, video_id: str, *, timeout: float | None = None) -> Iterator[Video]:
        """Yields the video object on every change (Server-Sent Events), ending after a final status.

        The first event is the current state. A dropped connection, a stream the server ended early (`event:
        interrupted`) or a 503 is reopened after a pause (the server starts again from the current state);
        `timeout` bounds the whole wait and raises TimeoutError. A change that brought a new preview (the server's
        `event: video.preview`) is one of these too; `previews` yields only those."""
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            try:
                for video in self._event_stream(video_id, deadline):
                    failures = 0
                    yield video
                    if video["status"] in TERMINAL:
                        return
            except httpx.TransportError as exc:
                failures += 1
                if failures > _SSE_RECONNECTS:
                    raise self._unreachable(exc) from None
            except (_Interrupted, APIError) as exc:
                if isinstance(exc, APIError) and exc.status != 503:
                    raise
                failures += 1
                if failures > _SSE_RECONNECTS:
                    raise exc.error if isinstance(exc, _Interrupted) else exc from None
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"video {video_id} did not finish within {timeout} s")
            time.sleep(min(0.2 * 2**failures, 5.0))

    def previews(self, video_id: str, *, timeout: float | None = None) -> Iterator[Video]:
        """Yields the video object each time the job has a newer preview (its `preview_step`: the steps it shows; the
        first at once if the job already has one), ending when the job ends. Fetch the preview itself with
        `download_preview` or `content(..., variant="preview")`: always the latest, so it may already be a newer one
        than the event's if the job runs ahead. A reconnect (see `events`) skips none: its first event carries the
        job's current `preview_step`."""
        shown = None
        for video in self.events(video_id, timeout=timeout):
            step = video.get("preview_step")
            if step is not None and step != shown:
                shown = step
                yield video

    def _event_stream(self, video_id: str, deadline: float | None) -> Iterator[Video]:
        read = _SSE_READ_TIMEOUT_S if deadline is None else max(0.1, min(_SSE_READ_TIMEOUT_S, deadline - time.monotonic()))
        with self._http.stream(
            "GET", f"/v1/videos/{_segment(video_id)}/events", timeout=httpx.Timeout(30.0, read=read)
        ) as response:
            if not response.is_success:
                response.read()
                raise _api_error(response)
            data: list[str] = []
            event = "message"
            for line in response.iter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line == "" and data:
                    payload = json.loads("\n".join(data))
                    if event == "interrupted":
                        error = payload.get("error") or {}
                        raise _Interrupted(APIError(503, error.get("message", "stream interrupted"), error.get("code")))
                    if event in ("video", "video.preview", "message"):
                        yield payload
                    data, event = [], "message"
                if deadline is not None and time.monotonic() >= deadline:
                    return

    def wait(self, video_id: str, *, timeout: float | None = None) -> Video:
        """Follows the job until it completes, fails or is canceled; returns the final video object."""
        final: Video = {}
        for event in self.events(video_id, timeout=timeout):
            final = event
        return final

    def wait_all(self, video_ids: Sequence[str], *, timeout: float | None = None) -> builtins.list[Video]:
        """`wait` for each of several jobs (the `video_ids` of a request with `n`); their final video objects in the
        same order. `timeout` bounds the whole wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        finals = []
        for video_id in video_ids:
            left = None if deadline is None else max(0.1, deadline - time.monotonic())
            finals.append(self.wait(video_id, timeout=left))
        return finals

    def content(self, video_id: str, *, variant: Variant = "video") -> bytes:
        """The MP4 (or the thumbnail, the spritesheet, an image job's PNG) in memory; see `download` for large files."""
        try:
            response = self._http.get(
                f"/v1/videos/{_segment(video_id)}/content", params={"variant": variant}, follow_redirects=True
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if not response.is_success:
            raise _api_error(response)
        return response.content

    def content_url(self, video_id: str, *, variant: Variant = "video") -> str:
        """Where an output is served (`GET`, with this client's API key; the server may redirect to storage)."""
        return f"{self.base_url}/v1/videos/{_segment(video_id)}/content?variant={variant}"

    def download_preview(self, video_id: str, path: str | Path) -> Path:
        """The job's latest preview MP4 to `path` (see `previews`); an APIError 409 while it has none yet."""
        return self.download(video_id, path, variant="preview")

    def download(self, video_id: str, path: str | Path, *, variant: Variant = "video") -> Path:
        """Streams a finished job's output to `path` (written whole or not at all). Follows the redirect to S3 when
        the server hands out presigned URLs (httpx drops the Authorization header on the way to another host)."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.part")
        try:
            with self._http.stream(
                "GET", f"/v1/videos/{_segment(video_id)}/content", params={"variant": variant}, follow_redirects=True
            ) as response:
                if not response.is_success:
                    response.read()
                    raise _api_error(response)
                with partial.open("wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
            os.replace(partial, path)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        finally:
            partial.unlink(missing_ok=True)
        return path

    # LoRA library: upload (a file or an https URL), list, retrieve, delete.
    def upload_lora(self, source: str | Path, *, name: str, model: str, shared: bool = False, **defaults: Any) -> dict[str, Any]:
        """Uploads a .safetensors file (a path), or has the server fetch it (an https:// URL). `defaults`: what jobs
        naming it inherit (num_inference_steps, guidance_scale, guidance_scale_2, flow_shift, expert)."""
        fields = {"name": name, "model": model, **{k: v for k, v in defaults.items() if v is not None}}
        if shared:
            fields["shared"] = True
        if isinstance(source, str) and source.startswith(("https://", "http://")):
            return self._request("POST", "/v1/loras", json={**fields, "url": source})  # type: ignore[no-any-return]
        path = Path(source)
        data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
        with path.open("rb") as fh:
            files = {"file": (path.name, fh, "application/octet-stream")}
            return self._request("POST", "/v1/loras", data=data, files=files, timeout=None)  # type: ignore[no-any-return]

    def loras(self) -> builtins.list[dict[str, Any]]:
        """Your LoRAs and the shared ones."""
        return self._request("GET", "/v1/loras")["data"]  # type: ignore[no-any-return]

    def lora(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/loras/{_segment(name)}")  # type: ignore[no-any-return]

    def delete_lora(self, name: str, *, shared: bool = False) -> dict[str, Any]:
        params = {"shared": "true"} if shared else None
        return self._request("DELETE", f"/v1/loras/{_segment(name)}", params=params)  # type: ignore[no-any-return]

    # Webhooks: the tenant's default endpoint and signing secret, and a job's delivery log.
    def webhook_endpoint(self, *, tenant: str | None = None) -> dict[str, Any]:
        return self._check(self._http.get("/v1/webhook_endpoint", params=_tenant(tenant))).json()  # type: ignore[no-any-return]

    def set_webhook_endpoint(
        self, url: str, *, events: builtins.list[str] | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        """Returns the endpoint; its `secret` is present only when this call created the signing secret."""
        response = self._http.put("/v1/webhook_endpoint", json={"url": url, "events": events}, params=_tenant(tenant))
        return self._check(response).json()  # type: ignore[no-any-return]

    def delete_webhook_endpoint(self, *, tenant: str | None = None) -> dict[str, Any]:
        return self._check(self._http.delete("/v1/webhook_endpoint", params=_tenant(tenant))).json()  # type: ignore[no-any-return]

    def rotate_webhook_secret(self, *, previous_valid_s: int | None = None, tenant: str | None = None) -> dict[str, Any]:
        """A new signing secret (in `secret`, shown once); the old one keeps signing for the rotation window."""
        body = {"previous_secret_valid_s": previous_valid_s} if previous_valid_s is not None else None
        response = self._http.post("/v1/webhook_endpoint/rotate_secret", json=body, params=_tenant(tenant))
        return self._check(response).json()  # type: ignore[no-any-return]

    def webhook_deliveries(self, video_id: str) -> dict[str, Any]:
        """`{"object": "list", "data": [...]}`: each delivery with its attempts and next retry."""
        return self._check(self._http.get(f"/v1/videos/{_segment(video_id)}/webhook_deliveries")).json()  # type: ignore[no-any-return]


def video_ids(video: Video) -> builtins.list[str]:
    """The ids of the jobs a create made, in seed order: its `video_ids` (a request with `n`), else its own id."""
    ids = video.get("video_ids")
    return [str(i) for i in ids] if ids else [str(video["id"])]


def _segment(value: str) -> str:
    """An id or a name as one segment of a URL path: `../etc` or `a/b` is then what the server is asked about, not
    another route (`.` and `..` encoded too, as httpx would resolve them)."""
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if encoded.strip(".") == "" else encoded


def _tenant(tenant: str | None) -> dict[str, str]:
    return {"tenant": tenant} if tenant else {}
