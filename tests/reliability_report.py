"""The figures the reliability and load tests produce, and docs/RELIABILITY.md rendered from them.

Tests call `record(section, figures)`; each call merges into test-artifacts/reliability.json
(WANQ_TEST_ARTIFACTS moves the folder) with the date and the machine it ran on, so a partial run
keeps the sections of earlier runs. Then:

    python -m tests.reliability_report            # writes docs/RELIABILITY.md from the JSON
    python -m tests.reliability_report --check    # exits 1 if a section is missing, lost something or answered 5xx
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ARTIFACTS = Path(os.environ.get("WANQ_TEST_ARTIFACTS", "test-artifacts"))
JSON_PATH = ARTIFACTS / "reliability.json"
DOC_PATH = Path("docs/RELIABILITY.md")

# Issue 8's items in its order, then issue 15's, then issue 23's: (section key, title, what was tried).
ITEMS: list[tuple[str, str, str]] = [
    ("sigkill", "1. Workers killed mid-denoise", "SIGKILL of the worker child (and once the whole worker) while a job denoises"),
    ("sigterm", "2. Warm shutdown", "SIGTERM to a worker while its job runs, as Kubernetes does on scale-down"),
    ("poison", "3. Poison jobs", "a job that always raises, and one that always kills its worker process"),
    (
        "redis_restart",
        "4. Redis restarted",
        "redis-server (AOF on) stopped and started again on the same port and data folder while jobs queue and run",
    ),
    ("oom", "5. Out of GPU memory", "CUDA out-of-memory raised mid-denoise (fault injection)"),
    ("timeout", "6. Hung job", "a job that never returns, past the soft and hard time limits"),
    ("storage_outage", "7. Storage outage", "the S3 endpoint refusing connections during the upload, briefly and for good"),
    ("load", "8. Load", "thousands of tiny jobs through the API with three workers"),
    ("bad_input", "9. Bad input", "schemathesis against /openapi.json, plus hand-made hostile bodies"),
    (
        "security",
        "10. Attackers",
        "routes without keys, other tenants' jobs, SSRF targets, secrets in logs, presigned URL expiry",
    ),
    (
        "exactly_once",
        "11. Exactly once under kills",
        "rounds of a Celery child killed mid-denoise (its parent held until upkeep requeued the job) and a whole worker "
        "killed mid-denoise while exports are in flight, then a replacement worker; runs and uploads counted per job "
        "from the workers' own run journal",
    ),
    (
        "hostile_input",
        "12. Hostile input",
        "generated LoRA headers (hypothesis) and the regular-expression patterns they carry, concurrent mixed "
        "requests (GET, POST, SSE) past the Redis pool's size, oversized JSON bodies, and address forms of private "
        "hosts (IPv4 spellings, IPv6 forms that embed IPv4) as webhook URLs and endpoints; goal: no 5xx",
    ),
]


# What the figures do not show, written by hand; keep in step with the tests.
LIMITS = [
    "A job is created by one atomic script, so the record and its queue entry exist together or not at all. "
    "But if Redis applies the script and goes away before its answer reaches the API, the client gets a 503 "
    "(or a dropped connection) for a job that exists: it runs and ends once like the others "
    "(`creates_not_answered_202_that_had_landed` counts them in the Redis restart). A client that must know "
    "sends an Idempotency-Key: the same script records the job under the key, so its retry replays the job.",
    "Redis is restarted gracefully (SIGTERM: it writes its AOF, then exits). With AOF's default "
    "`appendfsync everysec`, a crash of the Redis host can lose the last second of writes, jobs included; "
    "`appendfsync always` closes that gap at some cost in throughput. A SIGKILL of Redis is not tested.",
    "Where a test queues more jobs than two shared CPU cores can run in a few minutes (Redis restart: 500, "
    "load: 2,000), the workers run jobs until they have shown they carry on, then the rest of the queue is "
    "drained (canceled) through the admin API. Canceled is a terminal state: every job is counted, and each "
    "sends exactly one terminal webhook.",
    "moto, the test suite's S3, does not enforce the expiry of presigned URLs (an expired URL still answers "
    "200 there). The test checks what wanq controls: the URL's `X-Amz-Expires` is the configured lifetime "
    "and the SigV4 signature covers it, so real S3, MinIO and R2 refuse the URL once it has expired.",
    "Latencies are from a 2-core machine shared with other test runs (each section gives the load average), "
    "with the API, workers, Redis, S3 and the load generator on the same cores: they show the shape, not a capacity.",
]


def machine() -> str:
    cores = os.cpu_count() or 0
    try:
        load = f"load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = "load unknown"
    return f"{platform.node() or 'host'}: {cores} CPU cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}, {load} at the end"


def record(section: str, figures: dict[str, Any]) -> None:
    """Merges one test's figures into its section of the JSON file, stamped with the time and the machine."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = load()
    # Several tests may add to one section (bad input: the fuzzing and the hand-made cases).
    data[section] = {
        **data.get(section, {}),
        **figures,
        "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    tmp = JSON_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(JSON_PATH)


def load() -> dict[str, Any]:
    try:
        return json.loads(JSON_PATH.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value)
    return str(value)


def _runs(section: dict[str, Any]) -> str:
    """Runs counted from the run journal, where the test counts them: all, and those a kill interrupted."""
    if "runs" not in section:
        return ""
    return f"{section['runs']} for {section.get('jobs', '?')} jobs, {section.get('runs_interrupted_by_a_kill', 0)} killed"


def server_errors(section: dict[str, Any]) -> int:
    """The section's 5xx answers: the sum of its figures named `*_5xx` (wherever a test counts them)."""
    return sum(int(value) for name, value in section.items() if name.endswith("_5xx"))


def _summary(section: dict[str, Any]) -> str:
    if "summary" in section:
        return str(section["summary"])
    if any(name.endswith("_5xx") for name in section):
        return f"5xx: {server_errors(section)}"
    return ""


def render(data: dict[str, Any]) -> str:
    lines = [
        "# Reliability: what was tried, how often, and what was lost",
        "",
        "Generated by `python -m tests.reliability_report` from `test-artifacts/reliability.json`, which the",
        "tests below write as they run (`make test` and `make test-slow`). Every figure comes from the real",
        "stack of the test suite: redis-server, moto's S3 server over HTTP, the API, the dispatcher, the",
        "webhook delivery process and Celery workers running tiny Wan2.2 pipelines of the real diffusers",
        "classes on the CPU. Goal everywhere: nothing lost, no job run more often than its kills explain",
        "(runs = kills + 1, counted from the workers' own run journal), no 5xx but 503.",
        "",
        "Timings are from a small shared machine (see each section's `machine`) and say little about a GPU",
        "deployment; the counts are what matter.",
        "",
        "| item | lost | runs | figures |",
        "|---|---|---|---|",
    ]
    for key, title, _ in ITEMS:
        section = data.get(key)
        if section is None:
            lines.append(f"| {title} | not run | | |")
            continue
        lost = section.get("lost", 0)
        lines.append(f"| {title} | {lost} | {_runs(section)} | {_summary(section)} |")
    for key, title, tried in ITEMS:
        lines += ["", f"## {title}", "", f"Tried: {tried}.", ""]
        section = data.get(key)
        if section is None:
            lines.append("Not run in the recorded session.")
            continue
        test = section.get("test")
        if test:
            lines += [f"Test: `{test}`.", ""]
        for name, value in section.items():
            if name in ("summary", "test"):
                continue
            lines.append(f"- {name.replace('_', ' ')}: {_value(value)}")
    lines += ["", "## Known limits", ""]
    lines += [f"- {limit}" for limit in LIMITS]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a section is missing, reports a loss or a 5xx")
    parser.add_argument("--output", default=str(DOC_PATH))
    args = parser.parse_args(argv)
    data = load()
    if args.check:
        missing = [k for k, _, _ in ITEMS if k not in data]
        lossy = [k for k, v in data.items() if v.get("lost")]
        erring = [k for k, v in data.items() if server_errors(v)]
        print(f"missing: {missing or 'none'}; with losses: {lossy or 'none'}; with 5xx answers: {erring or 'none'}")
        return 1 if missing or lossy or erring else 0
    Path(args.output).write_text(render(data))
    print(f"wrote {args.output} ({len(data)} of {len(ITEMS)} sections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
