"""The job side of LoRA in shared/: how a spec carries its LoRAs through Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.errors import InvalidRequest
from shared.lora_files import LoraFileInfo
from shared.loras import LoraDefaults, LoraRecord
from shared.schemas import GenerationSpec, JobLora, JobRecord
from shared.settings import Settings
from shared.specs import parse_request, resolve_extension, resolve_spec

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


# An extension and its source's LoRAs ---------------------------------------------------------------------------


def _fast_lora(model: str, sha: str = "a" * 64) -> LoraRecord:
    """A step-distilled LoRA's record as the library holds it: it recommends 4 steps without CFG."""
    return LoraRecord(
        id="lora_1", name="fast", owner="t", model=model, size_bytes=10, sha256=sha, storage_key="loras/t/fast",
        defaults=LoraDefaults(num_inference_steps=4, guidance_scale=1.0),
        file=LoraFileInfo(format="peft", rank=4, modules=["to_q"], blocks=[0], num_modules=1, scale=1.0, dtype="bf16"),
    )  # fmt: skip


def _extend(source: JobRecord, records: dict[str, LoraRecord | None], **fields: Any) -> GenerationSpec:
    settings = Settings(models=["tiny-ti2v-5b"])
    req = parse_request({"prompt": "and then", "extend_video_id": source.id, **fields})
    return resolve_extension(
        req, source, settings.catalog(), settings.default_model, settings.jobs, image_key="k", loras=records,
        lora_limits=settings.loras,
    )  # fmt: skip


def test_an_extension_keeps_its_sources_loras_and_their_sampling_unless_it_names_its_own() -> None:
    settings = Settings(models=["tiny-ti2v-5b"])
    model = settings.catalog()["tiny-ti2v-5b"]
    fast = _fast_lora(model.id)
    plain_req = parse_request({"prompt": "a cat", "model": model.id, "num_frames": 5, "loras": [{"name": "fast"}]})
    made = resolve_spec(plain_req, settings.catalog(), settings.default_model, settings.jobs, has_image=False,
                        loras={"fast": fast}, lora_limits=settings.loras)  # fmt: skip
    assert (made.num_inference_steps, made.guidance_scale, len(made.loras)) == (4, 1.0, 1)
    source = JobRecord(id="video_src", tenant="t", spec=made)

    kept = _extend(source, {"fast": fast})  # no loras named: the source's, with their 4 steps and guidance 1
    assert [lora.name for lora in kept.loras] == ["fast"] and (kept.num_inference_steps, kept.guidance_scale) == (4, 1.0)
    dropped = _extend(source, {}, loras=[])  # [] for none: the model's own sampling, not the LoRA's
    assert dropped.loras == () and (dropped.num_inference_steps, dropped.guidance_scale) == (
        model.num_inference_steps,
        model.guidance_scale,
    )

    base = resolve_spec(parse_request({"prompt": "a cat", "model": model.id, "num_frames": 5}), settings.catalog(),
                        settings.default_model, settings.jobs, has_image=False)  # fmt: skip
    named = _extend(JobRecord(id="video_b", tenant="t", spec=base), {"fast": fast}, loras=[{"name": "fast"}])
    # A LoRA named for the extension brings its recommendations (the source's sampling is not taken over)
    assert [lora.name for lora in named.loras] == ["fast"] and (named.num_inference_steps, named.guidance_scale) == (4, 1.0)

    with pytest.raises(InvalidRequest) as gone:  # the source's LoRA was deleted since
        _extend(source, {"fast": None})
    assert gone.value.param == "loras" and "video_src" in gone.value.message and "'fast'" in gone.value.message
