"""``GET /api/models``: what this server can generate with, and each model's metric card."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from aigc.studio.schemas import (
    ImproveRequest,
    Job,
    ModelInfo,
    ModelList,
    PromoteRequest,
    RollbackRequest,
)
from aigc.studio.service import Studio, get_studio, require_admin_key, require_key

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
                | {"has_card": bool(ver.card),
                   "cards": {label: card.get("values", {}) for label, card in
                             studio.registry.cards(name, ver.version).items()}}
                for ver in studio.registry.versions(name)]
    return {"name": name, "serving": studio.served_versions[name], "aliases": state["aliases"],
            "versions": versions, "history": state["history"]}


def _registered(studio: Studio, name: str):
    from aigc.studio.service import ApiError

    if studio.registry is None or name not in studio.served_versions:
        raise ApiError(404, f"{name!r} is not a registered model served here (served: "
                       f"{', '.join(studio.served_versions) or 'none'})", "not_found_error",
                       code="model_not_found", param="name")


@router.post("/models/{name}/improve", response_model=Job, status_code=202,
             dependencies=[Depends(require_admin_key)])
def improve_model(name: str, body: ImproveRequest, studio: Studio = Depends(get_studio)) -> Job:
    """Queue "Improve from feedback": export this studio's feedback on the model's items,
    learn a candidate from production (DPO / Diffusion-DPO) and register it as
    ``NAME@candidate``. Follow it with ``GET /api/jobs/{id}/events``."""
    _registered(studio, name)
    job = studio.store.add_job("improve", name, body.model_dump(), 0.0)
    studio.runner.notify("improve")
    return Job(**job)


@router.post("/models/{name}/promote", response_model=Job, status_code=202,
             dependencies=[Depends(require_admin_key)])
def promote_model(name: str, body: PromoteRequest, studio: Studio = Depends(get_studio)) -> Job:
    """Queue a gated promotion: production and the version are measured on one protocol; the
    version serves only if it is not worse beyond the tolerances (or ``force`` with a
    ``reason``). The job's result says what the gate measured and whether it promoted."""
    from aigc.studio.service import ApiError

    _registered(studio, name)
    if body.force and not body.reason.strip():
        raise ApiError(400, "force needs a reason: the history records why the gate was "
                       "overruled", param="reason", code="reason_required")
    job = studio.store.add_job("promote", name, body.model_dump(), 0.0)
    studio.runner.notify("promote")
    return Job(**job)


@router.post("/models/{name}/rollback", dependencies=[Depends(require_admin_key)])
def rollback_model(name: str, body: RollbackRequest, studio: Studio = Depends(get_studio)
                   ) -> dict:
    """Production goes back to the version it had before its latest promotion; the server
    serves it before this answers."""
    from aigc.errors import AigcError
    from aigc.studio.service import ApiError

    _registered(studio, name)
    from aigc.studio.loop_jobs import switch_now

    try:
        entry = studio.registry.rollback(name, reason=body.reason)
    except AigcError as exc:
        raise ApiError(409, str(exc), code="nothing_to_roll_back", param="name") from None
    switch_now(studio.runner)
    return entry
