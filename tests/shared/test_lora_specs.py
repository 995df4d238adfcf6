"""The job side of LoRA in shared/: how a spec carries its LoRAs through Redis."""

from __future__ import annotations

import json

from shared.schemas import GenerationSpec, JobLora, JobRecord

SPEC = dict(
    model="tiny-t2v-a14b",
    prompt="a cat",
    negative_prompt="",
    width=64,
    height=64,
    num_frames=5,
    fps=8,
    num_inference_steps=2,
    guidance_scale=1.0,
    guidance_scale_2=1.0,
    flow_shift=5.0,
    seed=1,
)


def test_a_spec_without_loras_is_stored_as_before_and_one_with_loras_round_trips() -> None:
    plain = GenerationSpec(**SPEC)  # type: ignore[arg-type]
    assert "loras" not in json.loads(plain.model_dump_json()) and "loras" not in plain.model_dump()
    # Exactly the fields a worker of the release before LoRAs, extensions, images and the step cache knows (it
    # refuses unknown ones), so a rolling upgrade's old workers still run the new API's plain jobs.
    assert sorted(json.loads(plain.model_dump_json())) == sorted([*SPEC, "image_key"])
    for changed in ({"kind": "image"}, {"extend_from": "video_x", "source_frames": 5}, {"cache": False}):
        assert GenerationSpec.model_validate_json(plain.model_copy(update=changed).model_dump_json()) == plain.model_copy(
            update=changed
        )
    lora = JobLora(
        name="x", sha256="0" * 64, storage_key="loras/t/x.safetensors", size_bytes=10, strength=0.7, expert="low_noise"
    )
    with_lora = plain.model_copy(update={"loras": (lora,)})
    record = JobRecord(id="video_1", spec=with_lora)
    assert JobRecord.model_validate_json(record.model_dump_json()).spec == with_lora
    # What Redis' cjson makes of an empty list when a Lua script rewrites the record
    rewritten = json.loads(record.model_dump_json())
    rewritten["spec"]["loras"] = {}
    assert JobRecord.model_validate(rewritten).spec == plain
