"""The worker's stage-duration metric: its help text names every stage a job's timings record, the post-processing
stages included, and deploy/README.md lists the same; an interpolated and upscaled job's timings are observed
under their stage labels."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from shared.schemas import Stage
from tests.records import job_record
from worker import metrics

ROOT = Path(__file__).resolve().parents[2]


def help_line() -> str:
    text = generate_latest(metrics.REGISTRY).decode()
    return next(line for line in text.splitlines() if line.startswith("# HELP wanq_worker_stage_duration_seconds "))


def listed(text: str) -> set[str]:
    """The names inside the first parentheses of `text`."""
    inside = re.search(r"\(([^)]*)\)", text)
    assert inside is not None, text
    return set(re.findall(r"[a-z_]+", inside.group(1))) - {"and", "where", "a", "job", "has", "them"}


def test_the_help_names_every_timed_stage_and_the_deploy_readme_the_same() -> None:
    named = listed(help_line())
    assert {Stage.interpolating.value, Stage.upscaling.value} <= named
    # Every stage but the three that are states, not work: waiting, loading, ended.
    assert {s.value for s in Stage} - named == {"queued", "loading", "done"}
    assert {"fetching_source", "fetching_loras", "loading_loras"} <= named
    row = next(
        line
        for line in (ROOT / "deploy" / "README.md").read_text().splitlines()
        if "`wanq_worker_stage_duration_seconds`" in line
    )
    assert listed(row) == named


def test_the_runners_timings_are_the_help_texts_names() -> None:
    # What worker/ records as timings: literal keys, and the post-processing stages by their Stage value.
    source = "\n".join(p.read_text() for p in (ROOT / "worker").rglob("*.py"))
    recorded = set(re.findall(r'timings\["([a-z_]+)"\]\s*=', source)) - {"total"}
    assert "timings[stage.value] =" in (ROOT / "worker" / "postprocess.py").read_text()
    assert recorded and recorded <= listed(help_line()), recorded - listed(help_line())


def test_an_interpolated_upscaled_jobs_stages_are_observed() -> None:
    record = job_record("tiny-metrics", "t", interpolate=2, upscale=2)
    timings = {"encoding_prompt": 0.1, "denoising": 2.0, "decoding": 0.5, "interpolating": 0.3, "upscaling": 0.4, "total": 3.5}
    record.timings = timings
    metrics.job_ended("tiny-metrics", "completed", record)
    for stage in ("interpolating", "upscaling", "denoising"):
        count = metrics.REGISTRY.get_sample_value(
            "wanq_worker_stage_duration_seconds_count", {"model": "tiny-metrics", "stage": stage}
        )
        total = metrics.REGISTRY.get_sample_value(
            "wanq_worker_stage_duration_seconds_sum", {"model": "tiny-metrics", "stage": stage}
        )
        assert (count, total) == (1.0, timings[stage]), stage
    assert (
        metrics.REGISTRY.get_sample_value("wanq_worker_stage_duration_seconds_count", {"model": "tiny-metrics", "stage": "total"})
        is None
    )
