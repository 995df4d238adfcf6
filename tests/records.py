"""Job records for tests that talk to the store directly (no API in between)."""

from __future__ import annotations

import uuid
from typing import Any

from shared.fairqueue import FairQueue
from shared.schemas import GenerationSpec, JobRecord
from shared.settings import QuotaSettings
from shared.store import JobStore


def job_record(model: str, tenant: str, **spec: Any) -> JobRecord:
    """A queued one-step 64x64 job of `model` for `tenant`, with a fresh id; `spec` overrides fields."""
    fields: dict[str, Any] = {
        "model": model,
        "prompt": "a test job",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "num_frames": 5,
        "fps": 8,
        "num_inference_steps": 1,
        "guidance_scale": 1.0,
        "guidance_scale_2": None,
        "flow_shift": 1.0,
        "seed": 0,
        **spec,
    }
    return JobRecord(id=f"video_{uuid.uuid4().hex}", tenant=tenant, spec=GenerationSpec(**fields))


def store_job(store: JobStore, record: JobRecord) -> None:
    """Creates the job as the API does: stored and admitted to its tenant's queue in one script."""
    FairQueue(store, QuotaSettings(max_queued_jobs=1_000_000), [record.spec.model]).create(record)


def write_stray(store: JobStore, record: JobRecord) -> None:
    """The record and its listing indexes only, outside every queue: what an older API or a hand-made repair
    could leave, and what upkeep's reconciler must put back."""
    keys, score = store.keys, record.created_at
    pipe = store.redis.pipeline(transaction=True)
    pipe.set(keys.job(record.id), record.model_dump_json())
    pipe.zadd(keys.tenant_jobs(record.tenant), {record.id: score})
    pipe.zadd(keys.all_jobs, {record.id: score})
    pipe.zadd(keys.queued(record.spec.model), {record.id: score})
    pipe.execute()


def rewrite(store: JobStore, job_id: str, **fields: Any) -> JobRecord:
    """A test's back door: overwrites fields of a stored record without a transition (to stage a situation,
    e.g. a retention that ended or attempts used up). Indexes are left as they are."""
    record = store.get(job_id)
    assert record is not None, job_id
    updated = record.model_copy(update=fields)
    store.redis.set(store.keys.job(job_id), updated.model_dump_json(), keepttl=True)
    return updated
