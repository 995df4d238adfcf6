"""Request bodies of the create routes (videos, extensions, remixes, images, LoRAs): a JSON object or a form, read
into plain fields and at most one file, with OpenAI's input quirks undone here so that the request models see
one shape. Also the OpenAPI description of such a body (JSON, or the same fields as a multipart form).

The body's size is checked once, before a byte of it is read: by the pure-ASGI limit (api/body_limit.py),
on every route. Nothing here counts bytes again.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import FormData, UploadFile

from api.openapi import body_schema
from shared.errors import InvalidRequest

MULTIPART = "multipart/form-data"
FORMS = (MULTIPART, "application/x-www-form-urlencoded")
JSON_TYPES = ("application/json", "")  # no content type at all: read as JSON


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def unsupported(kind: str, accepted: str) -> InvalidRequest:
    return InvalidRequest(f"unsupported content type {kind!r}; send {accepted}", param="content-type")


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, refused (400 naming `body`) if it is not one or holds what no store can keep."""
    raw = await request.body()
    try:
        data = json.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:  # ValueError: also integers over 4300 digits; Recursion: deep nesting
        raise InvalidRequest(f"body is not valid JSON: {str(exc)[:200]}", param="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object", param="body")
    try:
        # JSON may escape lone surrogates (\ud800), which no UTF-8 store can hold: refuse them here.
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidRequest("body holds invalid Unicode: a lone surrogate escape such as \\ud800", param="body") from None
    return data


async def read_form(
    request: Request, *, file_field: str, max_fields: int, repeated: tuple[str, ...] = (), file_hint: str = ""
) -> tuple[dict[str, Any], FormData, UploadFile | None]:
    """A form's fields (the first value of each, all values of those `repeated`), the form itself, and the file
    sent as `file_field`; a file in any other field is refused."""
    form = await request.form(max_files=1, max_fields=max_fields)
    fields: dict[str, Any] = {}
    upload: UploadFile | None = None
    for key in set(form.keys()):
        values = form.getlist(key)
        if key == file_field and isinstance(values[0], UploadFile):
            upload = values[0]
            continue
        if any(isinstance(v, UploadFile) for v in values):
            raise InvalidRequest(f"field '{key}' must not be a file{file_hint}", param=key)
        fields[key] = values if key in repeated else values[0]
    return fields, form, upload


async def read_job_body(request: Request, file_field: str = "input_reference") -> tuple[dict[str, Any], bytes | None]:
    """A job's fields and its uploaded file (`file_field`: the image), from JSON or a form."""
    kind = content_type(request)
    if kind in FORMS:
        fields, form, upload = await read_form(request, file_field=file_field, max_fields=64, repeated=("webhook_events", *SEEDS))
        _gather_form_loras(fields, form)
        _gather_form_seeds(fields)
        return fields, None if upload is None else await upload.read()
    if kind in JSON_TYPES:
        data = await read_json(request)
        _unwrap_input_reference(data)
        return data, None
    raise unsupported(kind, "JSON or multipart/form-data")


SEEDS = ("seeds", "seeds[]")


def _gather_form_seeds(fields: dict[str, Any]) -> None:
    """`seeds` in a form: one field holding the list as JSON text, the field repeated (wanq's client), or the
    openai SDK's `seeds[]` fields (its form of extra_body={"seeds": [...]})."""
    given = [key for key in SEEDS if key in fields]
    if len(given) > 1:
        raise InvalidRequest("send 'seeds' once: as seeds fields or as seeds[] fields", param="seeds")
    if given:
        values = fields.pop(given[0])
        fields["seeds"] = values[0] if len(values) == 1 and given[0] == "seeds" else values


def _unwrap_input_reference(data: dict[str, Any]) -> None:
    """OpenAI's JSON form of a reference, {"input_reference": {"image_url": "..."}}, as wanq's `image_url`."""
    ref = data.pop("input_reference", None)
    if isinstance(ref, dict) and isinstance(ref.get("image_url"), str) and "image_url" not in data:
        data["image_url"] = ref["image_url"]
    elif ref is not None:
        raise InvalidRequest('\'input_reference\' in JSON must be {"image_url": "..."}', param="input_reference")


def _gather_form_loras(fields: dict[str, Any], form: FormData) -> None:
    """The openai SDK sends `extra_body={"loras": [...]}` in a multipart request as `loras[][name]`,
    `loras[][strength]`, ... (its "brackets" format): the n-th value of each belongs to the n-th LoRA."""
    parts = {key[len("loras[][") : -1]: form.getlist(key) for key in fields if key.startswith("loras[][") and key.endswith("]")}
    if not parts:
        return
    for key in list(fields):
        if key.startswith("loras[]"):
            del fields[key]
    if "loras" in fields:
        raise InvalidRequest("send 'loras' once: as one JSON field or as loras[][name] fields", param="loras")
    counts = {len(values) for values in parts.values()}
    if len(counts) != 1:
        raise InvalidRequest(
            "in a multipart form every LoRA needs the same fields (loras[][name], loras[][strength], ...); "
            "or send 'loras' as one JSON field",
            param="loras",
        )
    fields["loras"] = [{name: values[i] for name, values in parts.items()} for i in range(counts.pop())]


def job_body_schema(model: type[BaseModel], form_fields: dict[str, Any], *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request body of a create route: the model as JSON, or the same fields as a multipart form (every
    field a string there, `webhook_events` repeated) with the route's own form-only fields."""
    plain = {name: {"type": "string"} for name in model.model_fields if name not in (*skip, "webhook_events")}
    form = {
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {**plain, **form_fields, "webhook_events": {"type": "array", "items": {"type": "string"}}},
    }
    content = {"application/json": {"schema": body_schema(model)}, MULTIPART: {"schema": form}}
    return {"requestBody": {"required": True, "content": content}}


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The request body of a JSON-only route."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema(model)}}}}
