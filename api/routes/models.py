"""`/v1/models`: the configured models, their defaults, and the live workers serving each."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import PrincipalDep, ServicesDep
from api.openapi import ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList, summary="List the models this service accepts")
def list_models(services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    data = []
    for spec in services.settings.catalog().values():
        workers = services.store.live_workers(spec.id)
        data.append(
            {
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
                "live_workers": len(workers),
                "queued": services.store.queued_count(spec.id),
            }
        )
    return {"object": "list", "data": data}
