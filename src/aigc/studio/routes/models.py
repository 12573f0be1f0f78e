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
