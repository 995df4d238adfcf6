"""Throughput of one model's queue against its number of workers, through the whole real stack
(redis-server, moto's S3 server, the API, Celery worker processes on a tiny Wan2.2 pipeline).

    python benchmarks/scaling.py                      # 1, 2 and 3 workers, 12 jobs, 3 rounds
    python benchmarks/scaling.py --workers 1,2 --jobs 8 --rounds 1 --no-record

All workers start once and take one warm-up job each. A measurement lets N of them consume the
queue (the others are told to stop consuming, as `wanq worker-drain` does), submits all jobs at
once and times the first submission to the last completion. Rounds go 1, 2, 3, 1, 2, 3, ... so that
whatever else runs on the machine meanwhile weighs on every worker count alike; the table gives the
median and the best round. Prints the table and appends it to benchmarks/RESULTS.md with the
machine, the date and the command.

On a CPU the workers share the machine's cores, so this measures how the queue spreads work, not
how a GPU cluster scales (there, each worker brings its own GPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from shared.queue import make_celery, queue_name  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import JobStore  # noqa: E402
from wanq.stack import Stack  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")


def ready_nodes(store: JobStore, model: str) -> list[str]:
    """Celery node names of the model's loaded workers."""
    return sorted(str(w["node"]) for w in store.live_workers(model) if w.get("state") == "ready")


def consume_on(settings: Settings, model: str, nodes: list[str], count: int) -> None:
    """The first `count` workers consume the model's queue; the others stop (they stay loaded)."""
    app = make_celery(settings)
    try:
        queue = queue_name(model)
        if nodes[count:]:
            app.control.cancel_consumer(queue, destination=nodes[count:], reply=True, timeout=5, limit=len(nodes[count:]))
        app.control.add_consumer(queue, destination=nodes[:count], reply=True, timeout=5, limit=count)
    finally:
        app.close()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,3", help="worker counts to measure, comma-separated")
    parser.add_argument("--jobs", type=int, default=12, help="jobs per measurement")
    parser.add_argument("--model", default="tiny-t2v-a14b")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (OMP_NUM_THREADS); 0 = torch's default")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per worker count, interleaved")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    fields = {"size": args.size, "num_frames": args.frames, "num_inference_steps": args.steps}
    command = "python benchmarks/scaling.py " + " ".join(sys.argv[1:])
    header = harness.host_line()
    rows = []
    walls: dict[int, list[float]] = {count: [] for count in counts}
    latencies: dict[int, list[float]] = {count: [] for count in counts}
    with tempfile.TemporaryDirectory(prefix="wanq-bench-") as tmp, Stack(Path(tmp)) as stack:
        stack.env.update({"WANQ_MODELS": f'["{args.model}"]', "WANQ_S3_BUCKET": "wanq-bench"})
        stack.start_redis()
        stack.start_s3()
        stack.build_tiny_models([args.model])
        stack.seed_admin_key()  # the API refuses requests without a key
        stack.start_api()
        store = JobStore(redis.Redis.from_url(stack.redis_url))
        client = httpx.Client(base_url=stack.api_url, timeout=30, headers=stack.admin_headers())
        for n in range(max(counts)):
            threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
            stack.start_worker(args.model, name=f"bench-{n}", extra_env=threads)
        deadline = time.monotonic() + 300
        while len(ready_nodes(store, args.model)) < max(counts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{max(counts)} workers did not get ready")
            time.sleep(0.2)
        time.sleep(1.0)
        nodes = ready_nodes(store, args.model)
        run_jobs(client, args.model, 2 * len(nodes), fields)  # warm-up: first prompt encoding, allocator, codecs
        settings = Settings(redis={"url": stack.redis_url})
        for round_ in range(args.rounds):
            for count in counts:
                consume_on(settings, args.model, nodes, count)
                wall, lat = run_jobs(client, args.model, args.jobs, fields)
                walls[count].append(wall)
                latencies[count].extend(lat)
                print(f"round {round_ + 1}, {count} worker(s): {args.jobs} jobs in {wall:.1f} s", file=sys.stderr)
        client.close()

    rows = [
        (count, statistics.median(walls[count]), min(walls[count]), statistics.mean(latencies[count]), max(latencies[count]))
        for count in counts
    ]
    base = rows[0][1]
    lines = [
        "| workers | jobs/min (median round) | speed-up | jobs/min (best round) | wall s (median) | mean latency s | max latency s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {w} | {args.jobs / med * 60:.1f} | {base / med:.2f}x | {args.jobs / best * 60:.1f} | {med:.1f} | {mean:.1f} | {worst:.1f} |"
            for w, med, best, mean, worst in rows
        ),
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        threads = f"{args.threads} torch thread(s)" if args.threads else "torch's default threads (one per core)"
        spec = f"{args.model}, {args.size}, {args.frames} frames, {args.steps} steps; {args.jobs} jobs x {args.rounds} rounds; {threads} per worker"
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
