"""Helpers for the tests of each Redis script (tests/shared/lua/): run a script by name with its named
arguments as shared/lua runs it, write and read records."""

from __future__ import annotations

import json
from typing import Any

import redis

from shared import lua
from shared.keys import Keys
from shared.schemas import JobRecord
from tests.records import job_record


class Run:
    """Runs one script by name: `run(keys=[...], **args)`."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.script = lua.load(client, name)

    def __call__(self, keys: list[str], **args: Any) -> Any:
        return self.script(keys=keys, args=lua.argv(**args))


def stored(client: redis.Redis, keys: Keys, record: JobRecord) -> JobRecord:
    """Writes a record as it stands (the scripts under test read it)."""
    client.set(keys.job(record.id), record.model_dump_json())
    return record


def job(model: str = "m", tenant: str = "t", **fields: Any) -> JobRecord:
    record = job_record(model, tenant)
    return record.model_copy(update=fields)


def decoded(client: redis.Redis, keys: Keys, job_id: str) -> dict[str, Any]:
    raw = client.get(keys.job(job_id))
    assert raw is not None
    return json.loads(raw)  # type: ignore[no-any-return]
