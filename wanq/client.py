"""A small typed Python client for a wanq server: submit, follow live events, download, cancel, list, delete.

from wanq.client import Client
with Client("http://127.0.0.1:8000", api_key="wq_...") as client:
    video = client.submit("a red fox in the snow", model="wan2.2-ti2v-5b")
    for event in client.events(video["id"]):
        print(event["stage"], event["progress"])
    client.download(video["id"], "fox.mp4")
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"completed", "failed", "canceled"}


class WanqClientError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


class Client:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success or response.status_code in (301, 302, 307):
            return response
        try:
            error = response.json().get("error", {})
        except (json.JSONDecodeError, AttributeError):
            error = {}
        raise WanqClientError(
            response.status_code,
            error.get("message") or response.text[:200] or response.reason_phrase,
            error.get("code"),
            error.get("param"),
        )

    def submit(
        self, prompt: str, *, image: str | Path | None = None, idempotency_key: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Creates a job. `fields`: model, size, seconds, num_frames, seed, ... (None values are dropped)."""
        body = {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if image is not None:
            path = Path(image)
            data = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in body.items()}
            with path.open("rb") as fh:
                files = {"input_reference": (path.name, fh, "application/octet-stream")}
                response = self._http.post("/v1/videos", data=data, files=files, headers=headers)
        else:
            response = self._http.post("/v1/videos", json=body, headers=headers)
        return self._check(response).json()  # type: ignore[no-any-return]

    def get(self, video_id: str) -> dict[str, Any]:
        return self._check(self._http.get(f"/v1/videos/{video_id}")).json()  # type: ignore[no-any-return]

    def list(self, *, limit: int = 20, after: str | None = None, order: str = "desc") -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "order": order}
        if after:
            params["after"] = after
        return self._check(self._http.get("/v1/videos", params=params)).json()  # type: ignore[no-any-return]

    def cancel(self, video_id: str) -> dict[str, Any]:
        return self._check(self._http.post(f"/v1/videos/{video_id}/cancel")).json()  # type: ignore[no-any-return]

    def delete(self, video_id: str) -> dict[str, Any]:
        return self._check(self._http.delete(f"/v1/videos/{video_id}")).json()  # type: ignore[no-any-return]

    def models(self) -> list[dict[str, Any]]:
        return self._check(self._http.get("/v1/models")).json()["data"]  # type: ignore[no-any-return]

    def events(self, video_id: str, *, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yields the video object on every change (Server-Sent Events) until a terminal status."""
        with self._http.stream(
            "GET", f"/v1/videos/{video_id}/events", timeout=httpx.Timeout(timeout or 30.0, read=timeout)
        ) as response:
            self._check(response) if response.is_success else self._check(
                httpx.Response(response.status_code, content=response.read())
            )
            data: list[str] = []
            for line in response.iter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    video = json.loads("\n".join(data))
                    data = []
                    yield video
                    if video["status"] in TERMINAL:
                        return

    def wait(self, video_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        final: dict[str, Any] = {}
        for event in self.events(video_id, timeout=timeout):
            final = event
        return final or self.get(video_id)

    def download(self, video_id: str, path: str | Path, *, variant: str = "video") -> Path:
        path = Path(path)
        with self._http.stream(
            "GET", f"/v1/videos/{video_id}/content", params={"variant": variant}, follow_redirects=True
        ) as response:
            if not response.is_success:
                self._check(httpx.Response(response.status_code, content=response.read()))
            with path.open("wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
        return path

    # Webhooks: the tenant's default endpoint and signing secret, and a job's delivery log.
    def webhook_endpoint(self, *, tenant: str | None = None) -> dict[str, Any]:
        return self._check(self._http.get("/v1/webhook_endpoint", params=_tenant(tenant))).json()  # type: ignore[no-any-return]

    def set_webhook_endpoint(self, url: str, *, events: list[str] | None = None, tenant: str | None = None) -> dict[str, Any]:
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
        return self._check(self._http.get(f"/v1/videos/{video_id}/webhook_deliveries")).json()  # type: ignore[no-any-return]


def _tenant(tenant: str | None) -> dict[str, str]:
    return {"tenant": tenant} if tenant else {}
