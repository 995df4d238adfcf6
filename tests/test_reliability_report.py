"""docs/RELIABILITY.md's renderer and its `--check`: every section present, nothing lost, no 5xx anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import reliability_report
from tests.reliability_report import ITEMS, main, render

# What the hostile-input tests record (tests/api/test_webhook_api.py and the LoRA fuzz and concurrency tests).
HOSTILE = {
    "lora_headers_fuzzed": 10_000,
    "lora_fuzz_5xx": 0,
    "lora_fuzz_max_s_per_file": 0.04,
    "regex_patterns_tried": 500,
    "concurrent_requests": 1000,
    "concurrent_5xx": 0,
    "concurrent_p99_ms": 812.5,
    "ssrf_forms": 220,
    "ssrf_refused": 440,
    "ssrf_5xx": 0,
}


@pytest.fixture
def figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "reliability.json"
    monkeypatch.setattr(reliability_report, "JSON_PATH", path)
    return path


def write(path: Path, hostile: dict[str, Any] | None) -> None:
    data: dict[str, Any] = {key: {"lost": 0} for key, _, _ in ITEMS}
    if hostile is None:
        del data["hostile_input"]
    else:
        data["hostile_input"] = hostile
    path.write_text(json.dumps(data))


def test_the_hostile_input_section_renders_every_figure_recorded(figures: Path, tmp_path: Path) -> None:
    write(figures, HOSTILE)
    assert main(["--check"]) == 0
    doc = render(reliability_report.load())
    assert "| 12. Hostile input | 0 |  | 5xx: 0 |" in doc
    section = doc.split("## 12. Hostile input", 1)[1].split("## Known limits", 1)[0]
    assert "- lora headers fuzzed: 10000" in section and "- ssrf forms: 220" in section
    assert "- concurrent p99 ms: 812" in section and "- regex patterns tried: 500" in section


@pytest.mark.parametrize("failing", ["lora_fuzz_5xx", "concurrent_5xx", "ssrf_5xx", "json_body_5xx"])
def test_the_check_fails_on_any_5xx(figures: Path, failing: str, capsys: pytest.CaptureFixture[str]) -> None:
    write(figures, {**HOSTILE, failing: 3})
    assert main(["--check"]) == 1
    assert "with 5xx answers: ['hostile_input']" in capsys.readouterr().out
    assert "| 12. Hostile input | 0 |  | 5xx: 3 |" in render(reliability_report.load())


def test_the_check_fails_without_the_section(figures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(figures, None)
    assert main(["--check"]) == 1
    assert "missing: ['hostile_input']" in capsys.readouterr().out
