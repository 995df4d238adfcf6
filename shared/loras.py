"""The LoRA library: per-tenant records in Redis, and the resolution of a job's `loras` against them.

A record names one uploaded .safetensors file (kept in the bucket under its owner, `WANQ_LORAS_KEY_PREFIX`), what
its header says (shared/lora_files.py) and the sampling defaults it recommends. Names are unique per owner: a
tenant, or `_shared` for the LoRAs an admin published to every tenant; a tenant's own LoRA wins over a shared one
of the same name. Keys (shared/keys.py): `lora:{owner}:{name}` (the record) and `loras:{owner}` (names by
creation time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from shared.catalog import ModelSpec
from shared.errors import InvalidRequest
from shared.fields import FLOW_SHIFT, GUIDANCE_SCALE, GUIDANCE_SCALE_2, NUM_INFERENCE_STEPS, SAMPLING
from shared.keys import Keys
from shared.lora_files import LoraFileInfo, family_of
from shared.schemas import Expert, JobLora
from shared.settings import LoraSettings

SHARED_OWNER = "_shared"
"""Owner of the LoRAs published to every tenant (no tenant name starts with `_`)."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DEFAULT_FIELDS = tuple(field.name for field in SAMPLING)
"""The fields a LoRA may recommend (its `LoraDefaults`)."""


class LoraDefaults(BaseModel):
    """What a job that names the LoRA inherits for the fields it leaves out (a step-distilled LoRA: 4 steps, guidance 1)."""

    model_config = ConfigDict(extra="forbid")

    num_inference_steps: int | None = NUM_INFERENCE_STEPS.value("Recommended denoising steps.", optional=True)
    guidance_scale: float | None = GUIDANCE_SCALE.value("Recommended guidance (1: no CFG).", optional=True)
    guidance_scale_2: float | None = GUIDANCE_SCALE_2.value("Recommended low-noise guidance (A14B).", optional=True)
    flow_shift: float | None = FLOW_SHIFT.value("Recommended flow shift.", optional=True)
    expert: Expert | None = Field(default=None, description="The expert a job puts it in when it names none (A14B).")


class LoraRecord(BaseModel):
    """What Redis holds for one LoRA."""

    id: str
    name: str
    owner: str
    model: str
    """A model id or a family id (shared/lora_files.py `family_of`)."""
    size_bytes: int
    sha256: str
    storage_key: str
    created_at: float = Field(default_factory=time.time)
    defaults: LoraDefaults = Field(default_factory=LoraDefaults)
    file: LoraFileInfo

    @property
    def shared(self) -> bool:
        return self.owner == SHARED_OWNER

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "lora",
            "name": self.name,
            "model": self.model,
            "shared": self.shared,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "rank": self.file.rank,
            "format": self.file.format,
            "modules": self.file.modules,
            "blocks": self.file.blocks,
            "num_modules": self.file.num_modules,
            "scale": self.file.scale,
            "dtype": self.file.dtype,
            "created_at": int(self.created_at),
            "defaults": self.defaults.model_dump(exclude_none=True),
        }


def storage_key(settings: LoraSettings, owner: str, lora_id: str) -> str:
    return f"{settings.key_prefix}{owner}/{lora_id}.safetensors"


def model_matches(lora_model: str, model: ModelSpec) -> bool:
    return lora_model in (model.id, family_of(model))


class LoraStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def create(self, record: LoraRecord) -> bool:
        """Stores a new record; False if the owner already has a LoRA of that name."""
        key = self.keys.lora(record.owner, record.name)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                if pipe.exists(key):
                    return False
                pipe.multi()
                pipe.set(key, record.model_dump_json())
                pipe.zadd(self.keys.loras(record.owner), {record.name: record.created_at})
                pipe.execute()
            except redis.WatchError:
                return False  # created meanwhile
        return True

    def exists(self, owner: str, name: str) -> bool:
        return bool(self.redis.exists(self.keys.lora(owner, name)))

    def get(self, owner: str, name: str) -> LoraRecord | None:
        raw = self.redis.get(self.keys.lora(owner, name))
        return LoraRecord.model_validate_json(raw) if raw else None

    def visible(self, tenant: str, names: Iterable[str]) -> dict[str, LoraRecord | None]:
        """Each name as the tenant sees it: its own LoRA, else a shared one, else None. One round trip."""
        names = list(dict.fromkeys(names))
        if not names:
            return {}
        raws = self.redis.mget([self.keys.lora(o, n) for n in names for o in (tenant, SHARED_OWNER)])
        found: dict[str, LoraRecord | None] = {}
        for i, name in enumerate(names):
            own, shared = raws[2 * i], raws[2 * i + 1]
            raw = own or shared
            found[name] = LoraRecord.model_validate_json(raw) if raw else None
        return found

    def listing(self, tenant: str) -> list[LoraRecord]:
        """The tenant's LoRAs, then the shared ones it does not shadow, each oldest first."""
        records: list[LoraRecord] = []
        seen: set[str] = set()
        for owner in (tenant, SHARED_OWNER):
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in self.redis.zrange(self.keys.loras(owner), 0, -1)]
            raws = self.redis.mget([self.keys.lora(owner, n) for n in names]) if names else []
            for name, raw in zip(names, raws, strict=True):
                if raw and name not in seen:
                    seen.add(name)
                    records.append(LoraRecord.model_validate_json(raw))
        return records

    def delete(self, record: LoraRecord) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.lora(record.owner, record.name))
            pipe.zrem(self.keys.loras(record.owner), record.name)
            pipe.execute()


# -- a job's `loras` ---------------------------------------------------------------------------------


class LoraRequest(BaseModel):
    """One entry of a create request's `loras`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A LoRA of yours or a shared one (GET /v1/loras).")
    strength: float = Field(default=1.0, description="Multiplier of the adapter (default 1.0); 0 turns it off.")
    expert: Expert | None = Field(
        default=None,
        description="A14B only: high_noise, low_noise or both (default: the LoRA's recommended expert, else both).",
    )


def experts_of(model: ModelSpec, expert: Expert) -> tuple[str, ...]:
    """The transformers (`transformer`, `transformer_2`) a LoRA placed at `expert` goes into."""
    if model.guidance_scale_2 is None:  # one transformer
        return ("transformer",)
    return {"both": ("transformer", "transformer_2"), "high_noise": ("transformer",), "low_noise": ("transformer_2",)}[expert]


def resolve_job_loras(
    requested: Sequence[LoraRequest],
    records: Mapping[str, LoraRecord | None],
    model: ModelSpec,
    limits: LoraSettings,
) -> tuple[tuple[JobLora, ...], dict[str, Any]]:
    """The job's LoRAs resolved to their files, and the sampling defaults they recommend together.

    Refuses (400, naming `loras[i].<field>` and the value): more than `max_per_job`, an unknown name, a LoRA for
    another model, a strength outside [-max_strength, max_strength], an expert on a one-transformer model, the
    same LoRA twice on one expert, more LoRAs on one expert than the workers have slots, and LoRAs whose
    recommended defaults disagree."""
    if not requested:
        return (), {}
    if limits.max_resident == 0 or limits.max_per_job == 0:
        raise InvalidRequest("invalid 'loras': this deployment serves no LoRAs (WANQ_LORAS_MAX_RESIDENT is 0)", param="loras")
    if len(requested) > limits.max_per_job:
        raise InvalidRequest(
            f"invalid 'loras': {len(requested)} LoRAs; at most {limits.max_per_job} per job (WANQ_LORAS_MAX_PER_JOB)",
            param="loras",
        )
    resolved: list[JobLora] = []
    per_expert: dict[str, list[str]] = {}
    recommended: dict[str, tuple[Any, str]] = {}
    for i, ref in enumerate(requested):
        record = records.get(ref.name)
        if record is None:
            raise InvalidRequest(
                f"invalid 'loras[{i}].name' {ref.name!r}: no LoRA of that name (GET /v1/loras lists yours and the shared ones)",
                param=f"loras[{i}].name",
            )
        if not model_matches(record.model, model):
            raise InvalidRequest(
                f"invalid 'loras[{i}].name' {ref.name!r}: it is a LoRA for {record.model}, not for {model.id}",
                param=f"loras[{i}].name",
            )
        if not (math.isfinite(ref.strength) and abs(ref.strength) <= limits.max_strength):
            raise InvalidRequest(
                f"invalid 'loras[{i}].strength' {ref.strength!r}: must be between -{limits.max_strength:g} and "
                f"{limits.max_strength:g}",
                param=f"loras[{i}].strength",
            )
        expert: Expert = ref.expert or record.defaults.expert or "both"
        if model.guidance_scale_2 is None and expert != "both":
            raise InvalidRequest(
                f"invalid 'loras[{i}].expert' {expert!r}: {model.id} has one transformer; leave 'expert' out",
                param=f"loras[{i}].expert",
            )
        for transformer in experts_of(model, expert):
            holders = per_expert.setdefault(transformer, [])
            if record.sha256 in holders:
                where = (
                    f"{model.id}'s one transformer"
                    if model.guidance_scale_2 is None
                    else f"the {'high' if transformer == 'transformer' else 'low'}-noise expert"
                )
                raise InvalidRequest(
                    f"invalid 'loras[{i}].name' {ref.name!r}: this file is already named for {where}", param=f"loras[{i}].name"
                )
            holders.append(record.sha256)
            if len(holders) > limits.max_resident:
                raise InvalidRequest(
                    f"invalid 'loras': more than {limits.max_resident} LoRAs on one "
                    + ("transformer" if model.guidance_scale_2 is None else "expert")
                    + " (the workers' adapter slots, WANQ_LORAS_MAX_RESIDENT)",
                    param="loras",
                )
        for field in DEFAULT_FIELDS:
            value = getattr(record.defaults, field)
            if value is None or (field == "guidance_scale_2" and model.guidance_scale_2 is None):
                continue
            if field in recommended and recommended[field][0] != value:
                other_value, other = recommended[field]
                raise InvalidRequest(
                    f"invalid 'loras': {other!r} recommends {field} {other_value!r} and {ref.name!r} {value!r}; "
                    f"set '{field}' in the request",
                    param=field,
                )
            recommended[field] = (value, ref.name)
        resolved.append(
            JobLora(
                name=ref.name,
                sha256=record.sha256,
                storage_key=record.storage_key,
                size_bytes=record.size_bytes,
                strength=ref.strength,
                expert=expert,
            )
        )
    return tuple(resolved), {field: value for field, (value, _) in recommended.items()}
