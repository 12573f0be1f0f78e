"""``GET /api/models``: what this server can generate with, and each model's metric card."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from aigc.studio.schemas import ModelInfo, ModelList
from aigc.studio.service import Studio, get_studio, require_key

router = APIRouter(prefix="/api", tags=["models"], dependencies=[Depends(require_key)])


@router.get("/models", response_model=ModelList)
def list_models(studio: Studio = Depends(get_studio)) -> ModelList:
    models = [ModelInfo(id=d["id"], kind=d["kind"], family=d["family"],
                        description=d.get("description", ""), details=d)
              for d in studio.models()]
    return ModelList(models=models, skipped=studio.skipped)


@router.get("/models/{name}/lineage")
def model_lineage(name: str, studio: Studio = Depends(get_studio)) -> dict:
    """A registered model's versions (hash, parent, the feedback dataset it learned from, its
    metric card's existence), its aliases and the history of promotions and rollbacks, and the
    version this server serves now."""
    from aigc.studio.service import ApiError

    if studio.registry is None or name not in studio.served_versions:
        raise ApiError(404, f"{name!r} is not a registered model served here (served: "
                       f"{', '.join(studio.served_versions) or 'none'})", "not_found_error",
                       code="model_not_found", param="name")
    state = studio.registry.state(name)
    versions = [{k: v for k, v in ver.to_dict().items() if k not in ("path", "card")}
                | {"has_card": bool(ver.card)} for ver in studio.registry.versions(name)]
    return {"name": name, "serving": studio.served_versions[name], "aliases": state["aliases"],
            "versions": versions, "history": state["history"]}
