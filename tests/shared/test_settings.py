"""Settings: one typed object from WANQ_ variables; mistakes fail at start with what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import Settings, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


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
    ],
)
def test_mistakes_fail_with_what_to_change(monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert says in str(info.value)


def test_readme_lists_every_setting() -> None:
    table = settings_table()
    assert table in README.read_text(), "README's settings table is stale: run `make readme`"
