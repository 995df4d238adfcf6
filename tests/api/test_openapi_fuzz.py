"""schemathesis against the live API's /openapi.json: generated requests (valid and invalid, boundary
values, chained create -> read -> cancel -> delete) must never get a 5xx, and every answer must match
the documented status codes, content types, headers and schemas (api/openapi.py).

It runs as a tenant of its own (tests/tenants.py: FUZZ), so it sees and deletes only its own jobs,
and its quota admits only a couple of jobs at a time, so generated jobs never flood the workers. A
second, read-only pass with the admin key covers the admin listings. The quick run is part of
`make test`; the run of over a thousand cases is `slow`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability_report import record
from tests.tenants import FUZZ, make_key
from wanq.stack import Stack

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",  # data that breaks the schema must be refused with a 4xx
    ]
)


def schemathesis(stack: Stack, key: str, report: Path, *args: str) -> dict[str, Any]:
    """Runs the schemathesis CLI against the stack's API; returns its JSON report."""
    cli = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    command = [
        cli, "run", f"{stack.api_url}/openapi.json",
        "--header", f"Authorization: Bearer {key}",
        "--checks", CHECKS,
        "--workers", "1",
        "--request-timeout", "30",
        "--no-color",
        "--report", "json", "--report-json-path", str(report),
        *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    return json.loads(report.read_text())  # type: ignore[no-any-return]


def _cases(report: dict[str, Any]) -> int:
    assert report["failures"] == [] and report["errors"] == [], (report["failures"], report["errors"])
    assert report["test_cases"]["with_failures"] == 0
    return int(report["test_cases"]["generated"])


@pytest.fixture(scope="module")
def fuzz_key(stack: Stack) -> str:
    with httpx.Client(base_url=stack.api_url, headers=stack.admin_headers(), timeout=30) as admin:
        return make_key(admin, FUZZ)


def test_generated_requests_get_no_5xx_and_documented_answers(stack: Stack, fuzz_key: str, tmp_path: Path) -> None:
    report = schemathesis(
        stack, fuzz_key, tmp_path / "quick.json", "--max-examples", "3", "--seed", "8", "--phases", "coverage,fuzzing"
    )
    assert report["operations"]["tested"] >= 20
    assert _cases(report) >= 200


def test_admin_listings_match_their_schemas(stack: Stack, tmp_path: Path) -> None:
    admin_key = stack.admin_headers()["Authorization"].split(" ", 1)[1]
    # Reads only: with the admin key, a generated POST could drain a model's queue or revoke keys. Filters of
    # one kind are OR'ed, so everything else is excluded rather than the reads included.
    report = schemathesis(
        stack, admin_key, tmp_path / "admin.json",
        "--exclude-method", "POST", "--exclude-method", "PUT", "--exclude-method", "DELETE",
        "--exclude-path-regex", "^/(healthz|readyz)$|^/v1/(videos|webhook|loras)",
        "--max-examples", "5", "--seed", "8", "--phases", "coverage,fuzzing",
    )  # fmt: skip
    assert report["operations"]["tested"] == 5  # /v1/models, /v1/models/{model_id}, and the admin reads
    assert _cases(report) >= 20


@pytest.mark.slow
def test_over_a_thousand_generated_requests(stack: Stack, fuzz_key: str, tmp_path: Path) -> None:
    report = schemathesis(stack, fuzz_key, tmp_path / "full.json", "--max-examples", "30", "--seed", "20")
    cases = _cases(report)
    assert cases >= 1000, cases
    assert all(phase["status"] in ("success", "skip") for phase in report["phases"].values()), report["phases"]
    record(
        "bad_input",
        {
            "test": "tests/api/test_openapi_fuzz.py, tests/api/test_hostile_input.py, tests/api/test_validation.py",
            "summary": f"{cases} schemathesis cases on {report['operations']['tested']} operations: no 5xx, all answers "
            "as documented; hostile bodies all 4xx",
            "schemathesis_cases": cases,
            "schemathesis_operations": report["operations"]["tested"],
            "schemathesis_phases": ", ".join(k for k, v in report["phases"].items() if v["status"] == "success"),
            "schemathesis_checks": CHECKS,
            "server_errors": 0,
            "schema_mismatches": 0,
            "lost": 0,
        },
    )
