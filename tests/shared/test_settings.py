"""Settings: one typed object from WANQ_ variables; mistakes fail at start with what to change."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import Settings, settings_table, variables

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_DOC = ROOT / "docs" / "SETTINGS.md"


def test_nested_variables_map_to_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANQ_REDIS_URL", "redis://redis.example:6380/2")
    monkeypatch.setenv("WANQ_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("WANQ_S3_BUCKET", "clips")
    monkeypatch.setenv("WANQ_ENGINE_OFFLOAD", "group")
    monkeypatch.setenv("WANQ_JOBS_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("WANQ_MODELS", '["wan2.2-ti2v-5b"]')
    settings = Settings()
    assert settings.redis.url == "redis://redis.example:6380/2"
    assert settings.s3.endpoint_url == "http://minio:9000" and settings.s3.bucket == "clips"
    assert settings.engine.offload == "group" and settings.jobs.max_attempts == 5
    assert settings.default_model == "wan2.2-ti2v-5b" and list(settings.catalog()) == ["wan2.2-ti2v-5b"]


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("WANQ_MODELS", '["sora-2"]', "sora-2"),
        ("WANQ_ENGINE_OFFLOAD", "everything", "offload"),
        ("WANQ_JOBS_HARD_TIME_LIMIT_S", "10", "WANQ_JOBS_HARD_TIME_LIMIT_S"),
        ("WANQ_S3_KEY_PREFIX", "", "WANQ_LORAS_KEY_PREFIX 'loras/' overlap"),  # expiring outputs would take the LoRAs
        ("WANQ_LORAS_KEY_PREFIX", "videos/loras/", "WANQ_S3_KEY_PREFIX 'videos/'"),
        ("WANQ_S3_KEY_PREFIX", "videos", "WANQ_S3_KEY_PREFIX 'videos' must end with '/'"),  # the marker would expire
    ],
)
def test_mistakes_fail_with_what_to_change(monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert says in str(info.value)


def test_every_setting_says_what_it_means() -> None:
    blank = [variable for variable, field in variables() if not (field.description or "").strip()]
    assert not blank, f"give these settings a docstring (docs/SETTINGS.md's meaning column): {blank}"


def test_the_settings_doc_lists_every_setting() -> None:
    table = settings_table()
    assert table in SETTINGS_DOC.read_text(), "docs/SETTINGS.md's settings table is stale: run `make readme`"


def _environment_reads(source: str) -> list[str]:
    """Where a module reads a variable from os.environ (line: code); copying all of it for a child process is no read."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("getenv", "getenvb") and ast.unparse(node.value) == "os":
            found.append((node.lineno, ast.unparse(parents.get(node, node))))
        elif isinstance(node, ast.Attribute) and node.attr == "environ":
            parent = parents.get(node)
            copied = isinstance(parent, ast.Call) and ast.unparse(parent.func) == "dict"
            copied |= isinstance(parent, ast.Dict) and any(
                k is None and v is node for k, v in zip(parent.keys, parent.values, strict=True)
            )
            written = isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store)
            written |= isinstance(parent, ast.Attribute) and parent.attr in ("setdefault", "update")
            if not (copied or written):
                found.append((node.lineno, ast.unparse(parent or node)))
    return [f"{line}: {code}" for line, code in sorted(found)]


def test_nothing_but_the_settings_reads_the_environment() -> None:
    reads = [
        f"{path.relative_to(ROOT)}:{read}"
        for package in ("api", "shared", "wanq", "worker")
        for path in sorted((ROOT / package).rglob("*.py"))
        for read in _environment_reads(path.read_text())
    ]
    assert not reads, "read these through Settings (shared/settings.py) or ClientSettings (wanq/config.py):\n" + "\n".join(reads)


def test_the_environment_check_sees_each_kind_of_read() -> None:
    reads = "import os\na = os.environ.get('A')\nb = os.getenv('B')\nc = os.environ['C']\nd = 'D' in os.environ\n"
    assert [r.split(":")[0] for r in _environment_reads(reads)] == ["2", "3", "4", "5"]
    writes = "import os\nos.environ['A'] = '1'\nos.environ.setdefault('B', '2')\nenv = {**os.environ, 'C': '3'}\ne = dict(os.environ)\n"
    assert _environment_reads(writes) == []
