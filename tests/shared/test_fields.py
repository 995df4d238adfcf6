"""Each job field is declared once (shared/fields.py): its range reaches every model that carries it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from shared.errors import InvalidRequest
from shared.fields import FLOW_SHIFT, GUIDANCE_SCALE, SAMPLING, SECONDS, SEED, no_booleans, parse
from shared.image_specs import ImageRequest
from shared.loras import LoraDefaults
from shared.schemas import CacheOptions, DBCacheSetting, GenerationSpec
from shared.settings import EngineSettings
from shared.specs import VideoRequest
from shared.video import Video
from worker.cache import resolve


def test_one_range_in_every_schema_that_carries_the_field() -> None:
    for model in (VideoRequest, ImageRequest, Video, LoraDefaults):
        schema = model.model_json_schema()["properties"]["guidance_scale"]
        # An optional enforced field keeps its range in the number's branch of anyOf.
        schema = next((s for s in schema.get("anyOf", ()) if "minimum" in s), schema)
        assert (schema["minimum"], schema["maximum"]) == (GUIDANCE_SCALE.minimum, GUIDANCE_SCALE.maximum), model
    assert {f.name for f in SAMPLING} <= set(LoraDefaults.model_fields)


def test_check_names_the_field_the_value_and_the_range() -> None:
    assert GUIDANCE_SCALE.check(30.0) == 30.0
    with pytest.raises(InvalidRequest, match=r"invalid 'guidance_scale' 30\.5: must be between 0 and 30") as exc:
        GUIDANCE_SCALE.check(30.5)
    assert exc.value.param == "guidance_scale"
    with pytest.raises(InvalidRequest, match=r"must be between 0\.01 and 100"):
        FLOW_SHIFT.check(float("nan"))
    with pytest.raises(InvalidRequest, match="must be between 0 and 4294967295"):
        SEED.check(2**32)
    with pytest.raises(InvalidRequest, match="invalid 'seconds' 0: must be positive"):
        SECONDS.check(0)
    # An integer too large for a float (JSON allows 4,300 digits) is a 400 too, not an OverflowError (a 500).
    with pytest.raises(InvalidRequest, match="invalid 'seed'") as huge:
        SEED.check(10**400)
    assert huge.value.param == "seed"


def test_stored_and_public_objects_enforce_the_range() -> None:
    with pytest.raises(ValueError, match="less than or equal to 30"):
        LoraDefaults(guidance_scale=31)
    assert LoraDefaults(guidance_scale=30).guidance_scale == 30


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int | None = None
    _numbers = no_booleans("count")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"count": True}, "invalid 'count' True: Value error, must be a number, not true or false"),
        ({"cont": 1}, "unknown field 'cont'; did you mean 'count'?"),
        ({"count": "x" * 100}, "invalid 'count' '" + "x" * 76 + "...: Input should be a valid integer"),
    ],
)
def test_parse_names_the_field_and_value(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse(_Body, data, did_you_mean=lambda field: "; did you mean 'count'?" if field == "cont" else "")
    assert exc.value.message.startswith(message), exc.value.message
    assert exc.value.param == next(iter(data))


def test_a_jobs_cache_fields_over_the_workers() -> None:
    worker = EngineSettings(cache="dbcache", cache_rdt=0.5, cache_mc=-1)
    assert EngineSettings().cache_fn == DBCacheSetting().fn and EngineSettings().cache_rdt == DBCacheSetting().rdt
    assert resolve(worker, CacheOptions(fn=2)) == DBCacheSetting(fn=2, rdt=0.5, mc=-1)
    assert resolve(worker, None) == DBCacheSetting(rdt=0.5, mc=-1)
    assert resolve(worker, False) is None
    assert resolve(EngineSettings(), None) is None
    assert resolve(EngineSettings(), CacheOptions()) == DBCacheSetting()


@pytest.mark.parametrize(
    ("given", "kept"),
    [(True, {}), ("true", {}), ('{"rdt": 0.3}', {"rdt": 0.3}), ([], {}), (False, False), (None, None)],
)
def test_the_cache_field_is_parsed_by_its_type(given: Any, kept: Any) -> None:
    request = VideoRequest.model_validate({"prompt": "x", "cache": given})
    spec = GenerationSpec.model_validate(
        {
            "model": "m",
            "prompt": "x",
            "negative_prompt": "",
            "width": 16,
            "height": 16,
            "num_frames": 5,
            "fps": 16,
            "num_inference_steps": 1,
            "guidance_scale": 1.0,
            "guidance_scale_2": None,
            "flow_shift": 1.0,
            "seed": 0,
            "cache": given,
        }
    )
    for cache in (request.job_cache(), spec.cache):
        assert (cache.model_dump() if isinstance(cache, CacheOptions) else cache) == kept
