"""`/v1/loras`: the tenant's LoRA library: upload (a file, or an https URL the API fetches), list, retrieve, delete.

An upload is checked from its safetensors header alone (shared/lora_files.py: no torch here), stored in the
bucket under its owner, and recorded in Redis (shared/loras.py). Jobs name LoRAs by name; the workers fetch the
files by their storage key and verify them against the recorded sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from api.bodies import JSON_TYPES, MULTIPART, content_type, read_form, read_json, unsupported
from api.deps import Principal, PrincipalDep, ServicesDep
from api.openapi import Lora, LoraDeleted, LoraList
from api.services import Services
from shared.catalog import ModelSpec
from shared.errors import Conflict, Forbidden, InvalidRequest, NotFound
from shared.fetch import copy_hashed, fetch_to_file
from shared.fields import FLOW_SHIFT, GUIDANCE_SCALE, GUIDANCE_SCALE_2, NUM_INFERENCE_STEPS, parse
from shared.lora_files import family_of, inspect
from shared.loras import NAME_PATTERN, SHARED_OWNER, LoraDefaults, LoraRecord, storage_key
from shared.schemas import Expert

router = APIRouter(prefix="/v1/loras", tags=["loras"])


class LoraCreate(BaseModel):
    """The fields of `POST /v1/loras`: multipart form fields beside `file`, or a JSON body with `url`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Unique among your LoRAs: 1-64 letters, digits, '_', '.', '-'.")
    model: str = Field(description="A served model id, or a family: wan2.2-a14b (T2V- and I2V-A14B), wan2.2-ti2v-5b.")
    url: str | None = Field(default=None, description="JSON only: an https URL of the .safetensors file (redirects followed).")
    shared: bool = Field(default=False, description="Admins only: publish it to every tenant.")
    num_inference_steps: int | None = NUM_INFERENCE_STEPS.value("Recommended steps (e.g. 4 for Lightning).", optional=True)
    guidance_scale: float | None = GUIDANCE_SCALE.value("Recommended guidance (1: no CFG).", optional=True)
    guidance_scale_2: float | None = GUIDANCE_SCALE_2.value("Recommended low-noise guidance (A14B).", optional=True)
    flow_shift: float | None = FLOW_SHIFT.value("Recommended flow shift.", optional=True)
    expert: Expert | None = Field(default=None, description="A14B: the expert jobs put it in by default.")


_create_schema = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name", "model"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "One .safetensors LoRA file."},
                        **{n: {"type": "string"} for n in LoraCreate.model_fields if n not in ("url",)},
                    },
                }
            },
            "application/json": {"schema": LoraCreate.model_json_schema()},
        },
    }
}


def _target(services: Services, body: LoraCreate) -> ModelSpec:
    """A served model of the id or family the upload names (its block shapes are what the file is checked against)."""
    catalog = services.settings.catalog()
    if body.model in catalog:
        return catalog[body.model]
    for spec in catalog.values():
        if family_of(spec) == body.model:
            return spec
    families = sorted({family_of(s) for s in catalog.values()} - set(catalog))
    raise InvalidRequest(
        f"invalid 'model' {body.model!r}: name a served model ({', '.join(catalog)}) or a family ({', '.join(families)})",
        param="model",
    )


def _check_defaults(services: Services, body: LoraCreate, model: ModelSpec) -> LoraDefaults:
    two_experts = model.guidance_scale_2 is not None
    if not two_experts and body.guidance_scale_2 is not None:
        raise InvalidRequest(
            f"invalid 'guidance_scale_2' {body.guidance_scale_2!r}: {body.model} has a single expert", param="guidance_scale_2"
        )
    if not two_experts and body.expert not in (None, "both"):
        raise InvalidRequest(f"invalid 'expert' {body.expert!r}: {body.model} has a single transformer", param="expert")
    steps = body.num_inference_steps
    if steps is not None and steps > services.settings.jobs.max_steps:
        raise InvalidRequest(
            f"invalid 'num_inference_steps' {steps}: at most {services.settings.jobs.max_steps}", param="num_inference_steps"
        )
    if body.guidance_scale is not None and body.guidance_scale <= 1 and (body.guidance_scale_2 or 0) > 1:
        raise InvalidRequest(
            f"invalid 'guidance_scale_2' {body.guidance_scale_2!r}: guidance_scale {body.guidance_scale:g} turns "
            "classifier-free guidance off for both experts",
            param="guidance_scale_2",
        )
    return LoraDefaults(
        num_inference_steps=steps,
        guidance_scale=body.guidance_scale,
        guidance_scale_2=body.guidance_scale_2,
        flow_shift=body.flow_shift,
        expert=body.expert,
    )


async def _read(request: Request) -> tuple[dict[str, Any], UploadFile | None]:
    kind = content_type(request)
    if kind == MULTIPART:
        fields, _, upload = await read_form(request, file_field="file", max_fields=16, file_hint="; send the LoRA as 'file'")
        if "url" in fields:
            raise InvalidRequest("send the LoRA as 'file' in a multipart form, or as 'url' in a JSON body", param="url")
        if upload is None:
            raise InvalidRequest("'file' is required: one .safetensors file", param="file")
        return fields, upload
    if kind in JSON_TYPES:
        data = await read_json(request)
        if not isinstance(data.get("url"), str):
            raise InvalidRequest(
                "'url' is required in a JSON body (or upload the file as 'file' in a multipart form)", param="url"
            )
        return data, None
    raise unsupported(kind, "multipart/form-data or JSON")


def _owner(principal: Principal, shared: bool) -> str:
    if not shared:
        return principal.tenant
    if not principal.admin:
        raise Forbidden("only admin keys publish shared LoRAs ('shared': true)", param="shared")
    return SHARED_OWNER


@router.post(
    "",
    status_code=201,
    response_model=Lora,
    response_model_exclude_unset=True,
    openapi_extra=_create_schema,
    summary="Upload a LoRA to your library",
)
async def create_lora(request: Request, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    settings = services.settings
    limits = settings.loras
    # 1. The fields: what it is for, its recommended defaults, who owns it
    fields, upload = await _read(request)
    body = parse(LoraCreate, fields)
    model = _target(services, body)
    defaults = _check_defaults(services, body, model)
    owner = _owner(principal, body.shared)
    if await asyncio.to_thread(services.loras.exists, owner, body.name):
        raise Conflict(f"a LoRA named {body.name!r} exists already; delete it first or pick another name", param="name")

    # 2. The file, hashed as it arrives, then its header checked against the model's architecture
    with tempfile.NamedTemporaryFile(prefix="wanq-lora-", suffix=".safetensors") as tmp:
        if upload is not None:
            size, sha256 = await asyncio.to_thread(copy_hashed, upload.file, tmp, limit=limits.max_bytes)
        else:
            assert body.url is not None
            size, sha256 = await asyncio.to_thread(fetch_to_file, body.url, tmp, limit=limits.max_bytes, settings=settings)
        tmp.flush()
        info = await asyncio.to_thread(
            inspect,
            Path(tmp.name),
            model,
            max_header_bytes=limits.max_header_bytes,
            max_rank=limits.max_rank,
            max_scale=limits.max_scale,
        )
        # 3. Stored under its owner, then recorded (a name taken meanwhile loses its upload)
        lora_id = f"lora_{uuid.uuid4().hex}"
        key = storage_key(limits, owner, lora_id)
        await asyncio.to_thread(services.storage.upload_file, Path(tmp.name), key, "application/octet-stream")
    record = LoraRecord(
        id=lora_id,
        name=body.name,
        owner=owner,
        model=body.model,
        size_bytes=size,
        sha256=sha256,
        storage_key=key,
        defaults=defaults,
        file=info,
    )
    if not await asyncio.to_thread(services.loras.create, record):
        with contextlib.suppress(Exception):
            await asyncio.to_thread(services.storage.delete, key)
        raise Conflict(f"a LoRA named {body.name!r} exists already; delete it first or pick another name", param="name")
    return record.public()


@router.get("", response_model=LoraList, response_model_exclude_unset=True, summary="List your LoRAs and the shared ones")
def list_loras(services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    return {"object": "list", "data": [r.public() for r in services.loras.listing(principal.tenant)]}


def _visible(services: Services, principal: Principal, name: str) -> LoraRecord:
    record = services.loras.visible(principal.tenant, [name]).get(name)
    if record is None:
        raise NotFound(f"no LoRA named {name!r}", param="name")  # another tenant's too: as if it did not exist
    return record


@router.get("/{name}", response_model=Lora, response_model_exclude_unset=True, summary="Retrieve a LoRA")
def retrieve_lora(name: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    return _visible(services, principal, name).public()


@router.delete("/{name}", response_model=LoraDeleted, summary="Delete a LoRA and its file")
def delete_lora(
    name: str,
    services: ServicesDep,
    principal: PrincipalDep,
    shared: Annotated[bool, Query(description="Admins: delete the shared LoRA of this name.")] = False,
) -> dict[str, Any]:
    """Jobs already queued with it still run where a worker has the file cached; elsewhere they fail (invalid_request)."""
    owner = _owner(principal, shared) if shared else principal.tenant
    record = services.loras.get(owner, name)
    if record is None:
        if not shared and services.loras.get(SHARED_OWNER, name) is not None:
            raise Forbidden(f"{name!r} is a shared LoRA; admins delete it with ?shared=true", param="name")
        raise NotFound(f"no LoRA named {name!r}", param="name")
    services.loras.delete(record)
    with contextlib.suppress(Exception):
        services.storage.delete(record.storage_key)
    return {"id": record.id, "object": "lora.deleted", "name": record.name, "deleted": True}
