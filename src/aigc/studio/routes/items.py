"""``/api/items`` (the gallery), ratings (1-5 stars and pairwise A vs B), search, and the
content-addressed ``/files/{name}`` route."""

from __future__ import annotations

import random
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from aigc.studio.schemas import (
    MAX_SEED,
    Comparison,
    ComparisonRequest,
    Item,
    ItemList,
    RatingRequest,
)
from aigc.studio.service import ApiError, Studio, get_studio, require_key, require_read_key
from aigc.studio.store import MIME

router = APIRouter(tags=["items"], dependencies=[Depends(require_key)])
# With keys, files need the key too (header, or the cookie a valid Bearer request sets, so
# that <img src> works in the web UI).
files_router = APIRouter(tags=["items"], dependencies=[Depends(require_read_key)])


def render_item(studio: Studio, row: dict, *, full: bool = False) -> Item:
    backend = studio.images.get(row["model"]) or studio.musics.get(row["model"])
    extra = studio.store.comparison_stats(row["id"]) if full else {}
    files = (row["record"] or {}).get("files") if row["kind"] == "music" else None
    return Item(
        id=row["id"], job_id=row["job_id"], index=row["index"], kind=row["kind"],
        model=row["model"], model_sha256=row["model_sha256"], url=f"/files/{row['file']}",
        prompt=row["prompt"], seed=row["seed"], text=row["text"], record=row["record"],
        created=row["created"], stars=row.get("stars"), n_ratings=row.get("n_ratings") or 0,
        metric_card=backend.card if (backend is not None and full) else None,
        files={k: f"/files/{v}" for k, v in files.items()} if files else None, **extra)


@router.get("/api/items", response_model=ItemList)
def list_items(kind: Literal["image", "text", "music"] | None = None,
               model: str | None = Query(None, max_length=200),
               min_stars: float | None = Query(None, ge=1, le=5),
               q: str | None = Query(None, max_length=200, description="substring of prompt/text"),
               seed: int | None = Query(None, ge=0, le=MAX_SEED),
               limit: int = Query(50, ge=1, le=200), offset: int = Query(0, ge=0, le=1_000_000),
               studio: Studio = Depends(get_studio)) -> ItemList:
    """The gallery, newest first, with filters."""
    rows = studio.store.list_items(kind=kind, model=model, min_stars=min_stars, q=q, seed=seed,
                                   limit=limit, offset=offset)
    return ItemList(items=[render_item(studio, r) for r in rows])


@router.get("/api/search", response_model=ItemList)
def search(q: str = Query(..., min_length=1, max_length=200),
           limit: int = Query(20, ge=1, le=200),
           studio: Studio = Depends(get_studio)) -> ItemList:
    """Items whose prompt, text or model name contains ``q``."""
    rows = studio.store.list_items(q=q, limit=limit)
    return ItemList(items=[render_item(studio, r) for r in rows])


def _item(studio: Studio, item_id: str) -> dict:
    row = studio.store.get_item(item_id) if len(item_id) <= 64 else None
    if row is None:
        raise ApiError(404, f"item {item_id!r} not found", "not_found_error",
                       code="item_not_found", param="item_id")
    return row


@router.get("/api/items/{item_id}", response_model=Item)
def get_item(item_id: str, studio: Studio = Depends(get_studio)) -> Item:
    """One item with its full record, ratings and the metric card of its model."""
    return render_item(studio, _item(studio, item_id), full=True)


@router.post("/api/items/{item_id}/ratings", response_model=Item, status_code=201)
def rate_item(item_id: str, body: RatingRequest, request: Request,
              studio: Studio = Depends(get_studio)) -> Item:
    """Give an item 1-5 stars."""
    from aigc.studio.routes.feedback import rater_of

    _item(studio, item_id)
    return render_item(studio, studio.store.add_rating(item_id, body.stars,
                                                       rater_of(request, studio)), full=True)


@router.get("/api/comparisons/pair", response_model=ItemList)
def comparison_pair(kind: Literal["image", "text", "music"] = "image",
                    studio: Studio = Depends(get_studio)) -> ItemList:
    """Two distinct recent items of one kind to compare (empty when fewer than two exist)."""
    rows = studio.store.list_items(kind=kind, limit=100)
    if len(rows) < 2:
        return ItemList(items=[])
    pair = random.sample(rows, 2)
    return ItemList(items=[render_item(studio, r) for r in pair])


@router.post("/api/comparisons", response_model=Comparison, status_code=201)
def compare(body: ComparisonRequest, request: Request,
            studio: Studio = Depends(get_studio)) -> Comparison:
    """Record a pairwise preference: ``winner`` is ``a``, ``b`` or ``tie``."""
    from aigc.studio.routes.feedback import rater_of

    if body.a == body.b:
        raise ApiError(400, "a and b must be different items", param="b")
    a, b = _item(studio, body.a), _item(studio, body.b)
    if a["kind"] != b["kind"]:
        raise ApiError(400, f"cannot compare a {a['kind']} item with a {b['kind']} item",
                       param="b")
    return Comparison(**studio.store.add_comparison(body.a, body.b, body.winner,
                                                    rater_of(request, studio)))


@files_router.get("/files/{name}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}, "text/plain": {}, "audio/wav": {},
                                         "audio/midi": {}}}})
def get_file(name: str, studio: Studio = Depends(get_studio)) -> FileResponse:
    """A generated file by its content hash. Only ``<sha256>.<ext>`` names of regular files
    inside the files folder are served: no ``..``, no absolute paths, no symlinks."""
    path = studio.store.file_path(name)
    if path is None:
        raise ApiError(404, "no such file", "not_found_error", code="file_not_found",
                       param="name")
    return FileResponse(path, media_type=MIME[path.suffix[1:]],
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})
