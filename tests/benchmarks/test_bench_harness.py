"""benchmarks/harness.py on the CPU: the results file and its mirror, and the queue of variants in child processes
(a variant that raises, one that hangs past its cap, a child that dies) with real processes. The GPU measurements
themselves are checked by running the scripts with --tiny (benchmarks/RESULTS.md)."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

from benchmarks import harness

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    f"""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {str(ROOT)!r})
    from benchmarks import harness

    def run(name):
        if name == "boom":
            raise RuntimeError("boom")
        if name == "hang":
            time.sleep(120)
        if name == "die":
            os._exit(3)
        return {{"value": name}}

    deadline = float(sys.argv[sys.argv.index("--deadline") + 1])
    harness.child_queue(harness.Results(Path(sys.argv[1])), deadline, run)
    """
)


def test_results_are_saved_whole_to_the_file_and_each_mirror(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror" / "deeper"
    results = harness.Results(tmp_path, [mirror])
    results.save("env", {"gpus": ["cpu"]})
    results.save("steps:native", {"median_step_s": 1.5}, status="done")
    expected = {
        "env": {"gpus": ["cpu"]},
        "variants": {"steps:native": {"median_step_s": 1.5}},
        "status": {"steps:native": "done"},
    }
    assert results.load() == expected
    assert harness.Results(mirror).load() == expected


def test_the_queue_records_errors_caps_and_dead_children_and_goes_on(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    results = harness.Results(tmp_path)
    names = ["first", "boom", "hang", "after_hang", "die", "last"]
    caps = {name: 30.0 for name in names} | {"hang": 3.0}
    started = time.monotonic()
    harness.run_queue(results, names, caps, [sys.executable, str(script), str(tmp_path)], harness.Budget(100))
    recorded = results.load()
    assert recorded["status"] == {
        "first": "done",
        "boom": "error",
        "hang": "error",
        "after_hang": "done",
        "die": "error",
        "last": "done",
    }
    variants = recorded["variants"]
    assert variants["first"]["value"] == "first" and variants["last"]["value"] == "last"
    assert variants["boom"]["error"] == "RuntimeError: boom"
    assert variants["hang"]["error"] == "stopped: it ran past its cap of 3 s"
    assert variants["die"]["error"] == "stopped: the child process died (exit status 3)"
    assert time.monotonic() - started < 60  # the hanging child was killed at its cap, not waited for
    assert not (tmp_path / "queue.json").exists() and not (tmp_path / "current.json").exists()


def test_past_the_budget_nothing_starts_and_what_is_left_is_skipped(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    results = harness.Results(tmp_path)
    harness.run_queue(
        results, ["first", "second"], {"first": 30.0, "second": 30.0}, [sys.executable, str(script)], harness.Budget(10)
    )
    assert results.load()["status"] == {"first": "skipped", "second": "skipped"}
    assert results.load()["variants"]["first"] == {"skipped": "not started: the budget ran out"}
