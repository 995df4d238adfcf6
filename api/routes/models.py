"""`/v1/models`: the configured models, their defaults, and the live workers serving each."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import PrincipalDep, ServicesDep
from api.openapi import ModelInfo, ModelList
from shared.catalog import ModelSpec
from shared.errors import NotFound
from shared.store import JobStore

router = APIRouter(prefix="/v1/models", tags=["models"])


def _model_info(spec: ModelSpec, store: JobStore) -> dict[str, Any]:
    return {
        "id": spec.id,
        "object": "model",
        "created": 0,
        "owned_by": "wanq",
        "variant": spec.variant,
        "image_input": spec.image,
        "defaults": {
            "size": spec.size,
            "num_frames": spec.num_frames,
            "fps": spec.fps,
            "num_inference_steps": spec.num_inference_steps,
            "guidance_scale": spec.guidance_scale,
            "guidance_scale_2": spec.guidance_scale_2,
            "flow_shift": spec.flow_shift,
        },
        "size_multiple": spec.size_multiple,
        "live_workers": len(store.live_workers(spec.id)),
        "queued": store.queued_count(spec.id),
    }


@router.get("", response_model=ModelList, summary="List the models this service accepts")
def list_models(services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    data = [_model_info(spec, services.store) for spec in services.settings.catalog().values()]
    return {"object": "list", "data": data}


@router.get("/{model_id}", response_model=ModelInfo, summary="Retrieve one model (the openai SDK's models.retrieve)")
def retrieve_model(model_id: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    catalog = services.settings.catalog()
    if model_id not in catalog:
        raise NotFound(f"no model '{model_id}' here; this server serves: {', '.join(catalog)}", param="model")
    return _model_info(catalog[model_id], services.store)
