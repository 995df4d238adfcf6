"""Throughput of one model's queue against its number of workers, through the whole real stack
(redis-server, moto's S3 server, the API, Celery worker processes on a tiny Wan2.2 pipeline).

    python benchmarks/scaling.py                      # 1, 2 and 3 workers, 12 jobs each
    python benchmarks/scaling.py --workers 1,2 --jobs 8 --no-record

For each worker count: start the workers, give each one warm-up job, then submit all jobs at once
and time from the first submission to the last completion. Prints a table and appends it to
benchmarks/RESULTS.md with the machine, the date and the command.

On a CPU the workers share the machine's cores, so this measures how the queue spreads work, not
how a GPU cluster scales (there, each worker brings its own GPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.store import JobStore  # noqa: E402
from wanq.stack import Stack  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")


def live_ready(store: JobStore, model: str) -> set[str]:
    ids = {i.decode() for i in store.redis.zrange(f"{store.prefix}:workers:{model}", 0, -1)}
    ready = set()
    for worker_id in ids:
        raw = store.redis.get(f"{store.prefix}:worker:{worker_id}")
        if raw and b'"state": "ready"' in raw:
            ready.add(worker_id)
    return ready


def run_jobs(client: httpx.Client, model: str, count: int, fields: dict[str, object]) -> tuple[float, list[float]]:
    """Submits `count` jobs at once; returns (wall seconds, per-job latencies)."""
    started = time.perf_counter()
    submitted: dict[str, float] = {}
    for n in range(count):
        response = client.post("/v1/videos", json={"prompt": f"bench {n}", "model": model, **fields})
        response.raise_for_status()
        submitted[response.json()["id"]] = time.perf_counter()
    latencies = []
    pending = dict(submitted)
    while pending:
        for job_id in list(pending):
            video = client.get(f"/v1/videos/{job_id}").json()
            if video["status"] in ("completed", "failed", "canceled"):
                if video["status"] != "completed":
                    raise RuntimeError(f"job {job_id} ended {video['status']}: {video.get('error')}")
                latencies.append(time.perf_counter() - pending.pop(job_id))
        time.sleep(0.05)
    wall = time.perf_counter() - started
    return wall, latencies


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), ""
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} CPU cores ({cpu}), load average at start {load}, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,3", help="worker counts to measure, comma-separated")
    parser.add_argument("--jobs", type=int, default=12, help="jobs per measurement")
    parser.add_argument("--model", default="tiny-t2v-a14b")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    fields = {"size": args.size, "num_frames": args.frames, "num_inference_steps": args.steps}
    command = "python benchmarks/scaling.py " + " ".join(sys.argv[1:])
    header = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="wanq-bench-") as tmp, Stack(Path(tmp)) as stack:
        stack.env.update({"WANQ_MODELS": f'["{args.model}"]', "WANQ_S3_BUCKET": "wanq-bench"})
        stack.start_redis()
        stack.start_s3()
        stack.build_tiny_models([args.model])
        stack.start_api()
        store = JobStore.from_url(stack.redis_url)
        client = httpx.Client(base_url=stack.api_url, timeout=30)
        for count in counts:
            workers = [stack.start_worker(args.model, name=f"bench-{count}-{n}") for n in range(count)]
            deadline = time.monotonic() + 300
            while len(live_ready(store, args.model)) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{count} workers did not get ready")
                time.sleep(0.2)
            time.sleep(1.0)
            run_jobs(client, args.model, count, fields)  # warm-up: first prompt encoding, allocator, codecs
            wall, latencies = run_jobs(client, args.model, args.jobs, fields)
            rows.append((count, args.jobs, wall, args.jobs / wall * 60, statistics.mean(latencies), max(latencies)))
            print(f"{count} worker(s): {args.jobs} jobs in {wall:.1f} s", file=sys.stderr)
            for worker in workers:
                worker.stop()
            deadline = time.monotonic() + 30
            while live_ready(store, args.model) and time.monotonic() < deadline:
                time.sleep(0.2)
        client.close()

    base = rows[0][3]
    lines = [
        "| workers | jobs | wall s | jobs/min | speed-up | mean latency s | max latency s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {w} | {j} | {wall:.1f} | {rate:.1f} | {rate / base:.2f}x | {mean:.1f} | {worst:.1f} |"
            for w, j, wall, rate, mean, worst in rows
        ),
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        spec = f"{args.model}, {args.size}, {args.frames} frames, {args.steps} steps"
        entry = (
            f"\n## Queue scaling, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"- machine: {header}\n- jobs: {spec}\n- command: `{command.strip()}`\n\n{table}\n"
        )
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n")
        with RESULTS.open("a") as f:
            f.write(entry)
        print(f"appended to {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
