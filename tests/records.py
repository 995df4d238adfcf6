"""Job records for tests that talk to the store directly (no API in between)."""

from __future__ import annotations

import uuid
from typing import Any

from shared.schemas import GenerationSpec, JobRecord


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
