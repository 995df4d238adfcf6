"""`preview_every` and `decoder` (issue 27): stored only when a job uses them (so a previous release's worker,
which refuses unknown fields, still reads every other job), round-tripped when used, shown on the Video object
with `preview_step`; a record of a previous release (no preview_step) still reads."""

from __future__ import annotations

import json

import pytest

from shared.errors import InvalidRequest
from shared.schemas import GenerationSpec, JobRecord
from shared.settings import Settings
from shared.specs import parse_request, resolve_spec
from shared.video import Video

SPEC = dict(
    model="m",
    prompt="p",
    negative_prompt="",
    width=64,
    height=64,
    num_frames=9,
    fps=16,
    num_inference_steps=6,
    guidance_scale=4.0,
    guidance_scale_2=None,
    flow_shift=5.0,
    seed=1,
)


def test_left_out_at_their_defaults_and_round_tripped_when_used() -> None:
    plain = GenerationSpec(**SPEC)  # type: ignore[arg-type]
    stored = json.loads(plain.model_dump_json())
    assert "preview_every" not in stored and "decoder" not in stored
    used = plain.model_copy(update={"preview_every": 2, "decoder": "tiny"})
    stored = json.loads(used.model_dump_json())
    assert stored["preview_every"] == 2 and stored["decoder"] == "tiny"
    assert GenerationSpec.model_validate_json(used.model_dump_json()) == used
    # preview_every 0 (none, whatever the worker's default) is not the default None: it is kept
    assert json.loads(plain.model_copy(update={"preview_every": 0}).model_dump_json())["preview_every"] == 0


def test_an_old_record_reads_and_the_video_object_shows_the_preview() -> None:
    old = json.loads(JobRecord(id="video_1", spec=GenerationSpec(**SPEC)).model_dump_json())  # type: ignore[arg-type]
    del old["preview_step"]
    record = JobRecord.model_validate(old)
    video = Video.of(record)
    assert video.preview_step is None and video.preview_every is None and video.decoder == "full"
    shown = Video.of(record.model_copy(update={"preview_step": 4, "spec": record.spec.model_copy(update={"decoder": "tiny"})}))
    assert shown.preview_step == 4 and shown.decoder == "tiny"


def test_the_request_is_checked_against_the_jobs_steps() -> None:
    settings = Settings()
    catalog = settings.catalog()
    model = next(iter(catalog))

    def spec(**fields: object) -> GenerationSpec:
        return resolve_spec(
            parse_request({"prompt": "p", "model": model, **fields}), catalog, model, settings.jobs, has_image=False
        )

    made = spec(num_inference_steps=4, preview_every=4, decoder="tiny")
    assert made.preview_every == 4 and made.decoder == "tiny"
    assert spec().preview_every is None and spec().decoder == "full"
    with pytest.raises(InvalidRequest) as refused:
        spec(num_inference_steps=4, preview_every=5)
    assert refused.value.param == "preview_every"
    assert refused.value.message == "invalid 'preview_every' 5: must be between 0 and 4"
    with pytest.raises(InvalidRequest) as negative:
        spec(preview_every=-1)
    assert negative.value.param == "preview_every"
