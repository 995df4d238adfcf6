"""The service's own overhead, on the CPU, over loopback, with every component real.

Starts a private stack (redis-server, moto's S3 server, the API with its dispatcher, Celery workers on
tiny Wan2.2 pipelines) and measures:

1. POST /v1/videos latency percentiles and throughput at 1, 16 and 64 concurrent clients (closed
   loop: each client posts again as soon as it has its answer), against a model no worker serves,
   so that only the API's own work is measured; and, in the same run, a bare Celery `send_task`
   loop on the same Redis with the same concurrency: the floor for POST throughput.
2. Pick-up latency with an idle worker: POST accepted -> the worker has claimed the job
   (`attempt_started_at - created_at`, both stamped on this machine's clock).
3. The engine's idle share between back-to-back jobs: jobs queued on one worker, with the MP4
   export and upload overlapped with the next job (default) and not overlapped. Idle time is the gap
   between one job's end of decoding (`generated_at`) and the next job's claim. To make the step
   time realistic relative to encode and upload (on a GPU a TI2V-5B job denoises ~50 s and exports
   in ~1.5 s), the worker runs with the test-only fault hook and each job's prompt asks for a 0.5 s
   pause per denoising step (`[[fault:sleep@1]]`): 20 steps = 10 s of "GPU" per job, the pause
   holding no CPU, so the export and upload of the previous job run beside it as they would.

4. A burst of `--burst` requests at once (a third each GET /v1/videos, POST /v1/videos and event streams
   of a queued job, every one on its own connection), against the API's default Redis pool: the status
   counts (5xx should be none) and the latency to the answer or a stream's first event.

Prints a table and writes JSON next to RESULTS.md. Usage:
    python benchmarks/service_load.py [--seconds 8] [--burst 1000] [--out benchmarks/results/service_load.json]
    python benchmarks/service_load.py --burst-only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from benchmarks import harness
from shared.queue import make_celery
from shared.settings import Settings
from shared.store import JobStore
from wanq.stack import Stack

OPEN_RATES = (100.0, 300.0)  # req/s offered over 64 connections, one API process
OPEN_RATES_2 = (600.0,)  # the same with two API processes
SERVED = "tiny-t2v-a14b"
UNSERVED = "wan2.2-t2v-a14b"  # accepted and queued; no worker: POSTs measure the API alone


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _post_request(url: str, headers: dict[str, str]) -> tuple[str, int, bytes]:
    """The raw bytes of one POST /v1/videos, built once and sent over and over."""
    parsed = urlsplit(url)
    body = json.dumps({"prompt": "load", "model": UNSERVED, "size": "64x64", "num_frames": 5, "num_inference_steps": 1})
    head = ["POST /v1/videos HTTP/1.1", f"Host: {parsed.netloc}", "Content-Type: application/json"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head.append(f"Content-Length: {len(body)}")
    return parsed.hostname or "127.0.0.1", parsed.port or 80, ("\r\n".join(head) + "\r\n\r\n" + body).encode()


async def _read_status(reader: asyncio.StreamReader) -> int:
    """Reads one whole response (Content-Length or chunked body) and returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")  # no trailers are sent
    elif length:
        await reader.readexactly(length)
    return int(head[9:12])


async def post_load(url: str, headers: dict[str, str], clients: int, seconds: float, rate: float | None = None) -> dict[str, Any]:
    """POSTs over `clients` keep-alive connections for `seconds`.

    Closed loop (rate None): each connection posts again as soon as it has its answer, so this finds the
    saturation throughput, and latency is mostly queueing (Little's law). Open loop (rate in req/s):
    requests are due at a fixed rate whatever the answers, spread over the connections, and each latency
    counts from when the request was due, so a slow answer also delays the ones behind it (no coordinated
    omission). The client is a few lines of asyncio over raw HTTP/1.1: a general HTTP client spends
    more CPU per request than the API does and, on a shared 2-core machine, would measure itself.
    """
    host, port, request = _post_request(url, headers)
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    due: asyncio.Queue[float | None] = asyncio.Queue()

    async def one_client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                if rate is None:
                    if time.perf_counter() >= stop_at:
                        return
                    t0 = time.perf_counter()
                else:
                    t = await due.get()
                    if t is None:
                        return
                    t0 = t
                try:
                    writer.write(request)
                    status = await _read_status(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    status = 0  # the server dropped the connection: an error, then a new connection
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                if status == 202:
                    latencies.append(time.perf_counter() - t0)  # latency and throughput count successes only
                else:
                    errors += 1
        finally:
            writer.close()

    async def schedule() -> None:
        assert rate is not None
        first = time.perf_counter()
        for i in range(int(rate * seconds)):
            at = first + i / rate
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            due.put_nowait(at)
        for _ in range(clients):
            due.put_nowait(None)

    started = time.perf_counter()
    tasks = [one_client() for _ in range(clients)]
    if rate is not None:
        tasks.append(schedule())
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "mode": "closed" if rate is None else "open",
        "offered_rps": rate,
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p90_ms": pct(latencies, 0.90) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
    }


def _get_request(url: str, headers: dict[str, str], path: str) -> bytes:
    parsed = urlsplit(url)
    head = [f"GET {path} HTTP/1.1", f"Host: {parsed.netloc}", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


async def mixed_burst(url: str, headers: dict[str, str], *, gets: int, posts: int, streams: int, video_id: str) -> dict[str, Any]:
    """`gets` GET /v1/videos, `posts` POST /v1/videos and `streams` GET /v1/videos/{video_id}/events, all in
    flight at once: each on a connection of its own, every connection opened first, then every request
    written in one go. A stream counts once its first event is in and stays open until every other answer
    is in, so the streams overlap all of it. Status 0: the server dropped the connection.
    """
    host, port, post = _post_request(url, headers)
    listing = _get_request(url, headers, "/v1/videos?limit=20")
    events = _get_request(url, {**headers, "Accept": "text/event-stream"}, f"/v1/videos/{video_id}/events")
    kinds = ["get"] * gets + ["post"] * posts + ["stream"] * streams
    statuses: dict[str, list[int]] = {kind: [] for kind in ("get", "post", "stream")}
    latencies: list[float] = []
    answered = 0
    all_answered = asyncio.Event()
    connections = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in kinds))

    async def one(kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        t0 = time.perf_counter()
        try:
            if kind == "stream":
                writer.write(events)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                if status == 200:
                    await reader.readuntil(b"\n\n")  # the first event: the job as it is
            else:
                writer.write(post if kind == "post" else listing)
                status = await _read_status(reader)
            latencies.append(time.perf_counter() - t0)
        except (asyncio.IncompleteReadError, ConnectionError):
            status = 0
        statuses[kind].append(status)
        answered += 1
        if answered == len(kinds):
            all_answered.set()
        if kind == "stream":
            await all_answered.wait()
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(kind, *connection) for kind, connection in zip(kinds, connections, strict=True)))
    elapsed = time.perf_counter() - started
    every = [status for answers in statuses.values() for status in answers]
    return {
        "requests": len(every),
        "gets": gets,
        "posts": posts,
        "streams": streams,
        "status_counts": {str(status): every.count(status) for status in sorted(set(every))},
        "5xx": sum(1 for status in every if status >= 500),
        "dropped": every.count(0),
        "seconds": elapsed,
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


def celery_floor(settings: Settings, clients: int, seconds: float) -> dict[str, Any]:
    """A bare send_task loop (the enqueue the dispatcher does), same Redis, same concurrency."""
    app = make_celery(settings)
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def one_client() -> None:
        local = []
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            app.send_task("wanq.floor", args=["x"], queue="wanq.floor")
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    started = time.perf_counter()
    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
    }


def restart_api(stack: Stack, *, workers: int) -> None:
    for managed in [m for m in stack.processes if m.name.startswith("api-")]:
        managed.stop()
        stack.processes.remove(managed)
    stack.env["WANQ_API_WORKERS"] = str(workers)
    stack.start_api()


def drain(api: httpx.Client, model: str) -> None:
    api.post(f"/v1/admin/models/{model}/drain")


def wait_done(api: httpx.Client, ids: list[str], timeout: float = 600) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        videos = [api.get(f"/v1/videos/{i}").json() for i in ids]
        if all(v["status"] in ("completed", "failed", "canceled") for v in videos):
            return videos
        time.sleep(0.2)
    raise TimeoutError("jobs did not finish")


def pickup_latency(api: httpx.Client, store: JobStore, count: int) -> dict[str, Any]:
    samples = []
    for n in range(count):
        video = api.post(
            "/v1/videos",
            json={"prompt": f"pickup {n}", "model": SERVED, "size": "64x64", "num_frames": 5, "num_inference_steps": 1},
        ).json()
        wait_done(api, [video["id"]])
        record = store.get(video["id"])
        assert record is not None and record.attempt_started_at is not None
        samples.append(record.attempt_started_at - record.created_at)
        time.sleep(0.2)  # the worker is idle again (its upload done) before the next POST
    return {
        "jobs": count,
        "p50_ms": statistics.median(samples) * 1000,
        "p90_ms": pct(samples, 0.9) * 1000,
        "max_ms": max(samples) * 1000,
    }


def idle_share(api: httpx.Client, store: JobStore, jobs: int, job_fields: dict[str, Any]) -> dict[str, Any]:
    ids = [
        api.post("/v1/videos", json={"prompt": f"back to back {n} [[fault:sleep@1]]", "model": SERVED, **job_fields}).json()["id"]
        for n in range(jobs)
    ]
    wait_done(api, ids)
    records = sorted((r for r in (store.get(i) for i in ids) if r is not None), key=lambda r: r.attempt_started_at or 0)
    assert all(r.status.value == "completed" for r in records), [r.error for r in records]
    gaps = [
        b.attempt_started_at - a.generated_at for a, b in itertools.pairwise(records) if a.generated_at and b.attempt_started_at
    ]
    span = (records[-1].generated_at or 0) - (records[0].attempt_started_at or 0)
    per_job = statistics.median([r.timings.get("total", 0) for r in records])
    stages = {
        k: statistics.median([r.timings.get(k, 0) for r in records])
        for k in ("encoding_prompt", "denoising", "decoding", "encoding_video", "uploading")
    }
    return {
        "jobs": jobs,
        "idle_s_total": sum(gaps),
        "idle_gap_median_ms": statistics.median(gaps) * 1000,
        "span_s": span,
        "idle_share_pct": 100 * sum(gaps) / span,
        "job_total_median_s": per_job,
        "stage_medians_s": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each POST load level")
    parser.add_argument("--pickups", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=6, help="back-to-back jobs for the idle measurement")
    parser.add_argument("--out", default="benchmarks/results/service_load.json")
    parser.add_argument("--post-only", action="store_true", help="part 1 only (for iterating on the API's own overhead)")
    parser.add_argument("--burst", type=int, default=1000, help="requests in flight at once in part 4")
    parser.add_argument("--burst-only", action="store_true", help="part 4 only")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="wanq-bench-"))
    stack = Stack(root)
    stack.env.update(
        {
            "WANQ_MODELS": json.dumps([SERVED, UNSERVED]),
            "WANQ_S3_CREATE_BUCKET": "true",
            "WANQ_QUOTAS_TENANTS": json.dumps(
                {"admin": {"max_queued_jobs": 10**7, "requests_per_minute": 10**7, "max_running_jobs": 1000}}
            ),
            "WANQ_WORKER_HEARTBEAT_INTERVAL_S": "0.5",
            "WANQ_ENGINE_FAULT_INJECTION": "true",  # only for the per-step pause of part 3
        }
    )
    stack.seed_admin_key()
    results: dict[str, Any] = dict(harness.stack_head())
    try:
        stack.start_redis()
        stack.start_s3()
        stack.build_tiny_models([SERVED], root / "models")
        stack.start_api()
        stack.start_worker(SERVED)
        stack.wait_for_workers(SERVED, 1, timeout=300)
        saved = dict(os.environ)
        os.environ.update(stack.env)
        settings = Settings()
        os.environ.clear()
        os.environ.update(saved)
        store = JobStore(redis.Redis.from_url(settings.redis.url))
        headers = stack.admin_headers()
        api = httpx.Client(base_url=stack.api_url, headers=headers, timeout=30)

        # 4. A burst of GETs, POSTs and event streams all at once (first: it needs only the API)
        held = api.post("/v1/videos", json={"prompt": "followed", "model": UNSERVED, "size": "64x64", "num_frames": 5})
        third = args.burst // 3
        results["burst"] = asyncio.run(
            mixed_burst(
                stack.api_url, headers, gets=args.burst - 2 * third, posts=third, streams=third, video_id=held.json()["id"]
            )
        )
        drain(api, UNSERVED)
        if args.burst_only:
            print_table(results)
            return

        # 1. POST latency and throughput, and the bare Celery floor
        results["post"] = []
        results["floor"] = []
        for clients in (1, 16, 64):
            results["post"].append(asyncio.run(post_load(stack.api_url, headers, clients, args.seconds)))
            drain(api, UNSERVED)
            results["floor"].append(celery_floor(settings, clients, args.seconds))
            store.redis.delete("wanq.floor")

        # Open loop: requests due at a fixed rate over 64 connections (latency at a given load).
        results["post_open"] = []
        for rate in OPEN_RATES:
            results["post_open"].append(asyncio.run(post_load(stack.api_url, headers, 64, args.seconds, rate)))
            drain(api, UNSERVED)

        # The same API on two processes (`wanq api --workers 2`): one process is one core.
        results["post_2_processes"] = []
        restart_api(stack, workers=2)
        api = httpx.Client(base_url=stack.api_url, headers=headers, timeout=30)
        for rate in (None, *OPEN_RATES_2):
            results["post_2_processes"].append(asyncio.run(post_load(stack.api_url, headers, 64, args.seconds, rate)))
            drain(api, UNSERVED)
        restart_api(stack, workers=1)
        api = httpx.Client(base_url=stack.api_url, headers=headers, timeout=30)

        if args.post_only:
            print_table(results)
            return

        # 2. Pick-up latency with an idle worker
        results["pickup"] = pickup_latency(api, store, args.pickups)

        # 3. Engine idle between back-to-back jobs, overlap on (default)
        job = {"size": "128x128", "num_frames": 33, "num_inference_steps": 20}
        results["idle_overlap"] = idle_share(api, store, args.jobs, job)
        results["job_fields"] = job
    finally:
        stack.stop()

    # Same measurement without the overlap, on a fresh worker process.
    stack2 = Stack(root / "no-overlap")
    stack2.env.update({**stack.env, "WANQ_WORKER_OVERLAP_EXPORT": "false"})
    try:
        stack2.start_redis()
        stack2.start_s3()
        stack2.model_paths = stack.model_paths
        stack2.start_api()
        stack2.start_worker(SERVED)
        stack2.wait_for_workers(SERVED, 1, timeout=300)
        api2 = httpx.Client(base_url=stack2.api_url, headers=stack2.admin_headers(), timeout=30)
        store2 = JobStore(redis.Redis.from_url(stack2.redis_url))
        results["idle_serial"] = idle_share(api2, store2, args.jobs, results["job_fields"])
    finally:
        stack2.stop()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(r: dict[str, Any]) -> None:
    print(f"\nservice_load — {r['date']} — {r['machine']}")
    b = r["burst"]
    print(f"\nburst: {b['requests']} requests at once ({b['gets']} GET, {b['posts']} POST, {b['streams']} event streams)")
    print(
        f"answers {b['status_counts']} | 5xx {b['5xx']} | dropped {b['dropped']} | "
        f"p50 {b['p50_ms']:.0f} ms | p99 {b['p99_ms']:.0f} ms | max {b['max_ms']:.0f} ms | all in {b['seconds']:.1f} s"
    )
    if "post" not in r:
        return
    print("\nPOST /v1/videos (closed loop)              | bare Celery send_task (floor)")
    print("clients |  req/s |  p50 ms |  p90 ms |  p99 ms | errors |  req/s | p50 ms | p99 ms | POST/floor")
    for post, floor in zip(r["post"], r["floor"], strict=True):
        print(
            f"{post['clients']:7d} | {post['throughput_rps']:6.0f} | {post['p50_ms']:7.1f} | {post['p90_ms']:7.1f} | {post['p99_ms']:7.1f} | "
            f"{post['errors']:6d} | {floor['throughput_rps']:6.0f} | {floor['p50_ms']:6.2f} | {floor['p99_ms']:6.2f} | {post['throughput_rps'] / floor['throughput_rps']:.2f}"
        )
    print("\nPOST /v1/videos, open loop over 64 connections (latency counted from when each request was due)")
    print("API processes | offered req/s | served req/s |  p50 ms |  p90 ms |  p99 ms | errors")
    rows = [(1, p) for p in r["post_open"]] + [(2, p) for p in r["post_2_processes"]]
    for procs, post in rows:
        offered = "closed" if post["offered_rps"] is None else f"{post['offered_rps']:.0f}"
        print(
            f"{procs:13d} | {offered:>13} | {post['throughput_rps']:12.0f} | {post['p50_ms']:7.1f} | {post['p90_ms']:7.1f} | "
            f"{post['p99_ms']:7.1f} | {post['errors']:6d}"
        )
    if "pickup" not in r:
        return
    p = r["pickup"]
    print(
        f"\npick-up latency (idle worker, {p['jobs']} jobs): p50 {p['p50_ms']:.1f} ms, p90 {p['p90_ms']:.1f} ms, max {p['max_ms']:.1f} ms"
    )
    for name in ("idle_overlap", "idle_serial"):
        i = r[name]
        print(
            f"{name}: {i['jobs']} jobs of {r['job_fields']}, job median {i['job_total_median_s']:.2f} s "
            f"(stages {', '.join(f'{k} {v:.2f}' for k, v in i['stage_medians_s'].items())}); "
            f"engine idle {i['idle_s_total']:.2f} s of {i['span_s']:.1f} s = {i['idle_share_pct']:.2f}% (median gap {i['idle_gap_median_ms']:.0f} ms)"
        )


if __name__ == "__main__":
    main()
