"""`wanq api --workers N`: N processes share the port, each built from the same settings through
`wanq.cli:api_factory`, all on the same Redis (one API process is about one core of POSTs)."""

from __future__ import annotations

import sys

import httpx
import psutil

from wanq.stack import Stack, free_port, wait_until


def test_two_api_processes_serve_the_same_jobs(stack: Stack, api: httpx.Client) -> None:
    port = free_port()
    managed = stack.spawn(f"api-{port}-x2", [sys.executable, "-m", "wanq", "api", "--port", str(port), "--workers", "2"])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: managed.check_alive() and Stack._healthy(url), 120, "the two-process API")
        serving = [
            p
            for p in psutil.Process(managed.proc.pid).children(recursive=True)
            if "api_factory" in " ".join(p.cmdline()) or "spawn_main" in " ".join(p.cmdline())
        ]
        assert len(serving) >= 2, [p.cmdline() for p in psutil.Process(managed.proc.pid).children(recursive=True)]
        with httpx.Client(base_url=url, headers=stack.admin_headers(), timeout=30) as other:
            ids = []
            for n in range(6):  # over several connections, so both processes get some
                with httpx.Client(base_url=url, headers=stack.admin_headers(), timeout=30) as fresh:
                    response = fresh.post(
                        "/v1/videos",
                        json={"prompt": f"two processes {n}", "model": "wan2.2-t2v-a14b", "size": "64x64", "num_frames": 5},
                    )
                assert response.status_code == 202, response.text
                assert response.headers["location"] == f"/v1/videos/{response.json()['id']}"
                ids.append(response.json()["id"])
            # Each process sees every job, and so does the session's own API: one Redis behind them all.
            for video_id in ids:
                assert other.get(f"/v1/videos/{video_id}").json()["id"] == video_id
                assert api.get(f"/v1/videos/{video_id}").json()["status"] == "queued"
            assert other.get("/v1/videos/video_nope").status_code == 404
    finally:
        managed.stop()
        stack.processes.remove(managed)
    for video_id in ids:
        api.delete(f"/v1/videos/{video_id}")
