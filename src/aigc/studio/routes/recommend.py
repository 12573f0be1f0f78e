"""``GET /api/recommendations``: items, and settings to generate with, ranked for one person from
their stars, comparisons, flags and implicit signals (:mod:`aigc.apps.recommend`).

Who: ``user`` is an anonymous rater id (the ``X-Aigc-Rater`` a browser sends, same rules: 8-64
letters, digits, ``_`` or ``-``); without ``user``, the caller (their API key's name, or their
``X-Aigc-Rater``). With API keys configured, a caller may ask only for themselves: ``user``
must then be their key's name.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from aigc.apps.recommend.ranker import MAX_K, Recommender
from aigc.studio.routes.feedback import RATER_ID, rater_of
from aigc.studio.routes.items import render_item
from aigc.studio.schemas import Item
from aigc.studio.service import ApiError, Studio, get_studio, require_key

router = APIRouter(prefix="/api", tags=["recommendations"], dependencies=[Depends(require_key)])
_LOCK = threading.Lock()


class Recommended(BaseModel):
    item: Item
    score: float
    popularity: float
    collaborative: float
    content: float


class SettingToTry(BaseModel):
    kind: str
    model: str
    label: int | None = None
    class_name: str | None = None
    prompt: str | None = None
    style: str | None = None
    key: str | None = None
    meter: str | None = None
    score: float
    items: int


class RecommendationList(BaseModel):
    user: str
    strategy: str
    n_signals: int
    items: list[Recommended]
    settings: list[SettingToTry]


def recommender_of(request: Request, studio: Studio) -> Recommender:
    """The app's one :class:`Recommender` (made on first use, for the running studio)."""
    with _LOCK:
        held = getattr(request.app.state, "recommender", None)
        if held is None or held[0] is not studio:
            held = (studio, Recommender(studio.store))
            request.app.state.recommender = held
    return held[1]


def _whose(request: Request, studio: Studio, user: str | None) -> str:
    caller = rater_of(request, studio)
    if user is None:
        return caller
    if not RATER_ID.match(user):
        raise ApiError(400, f"user must be 8-64 letters, digits, '_' or '-' (a rater id), got "
                            f"{user[:80]!r}", param="user", code="bad_user_id")
    if studio.key_hashes:
        if caller != f"key:{user}":
            raise ApiError(403, "with API keys, recommendations are only given for one's own "
                                "key: leave out 'user' or pass your key's name",
                           "permission_error", param="user", code="not_yours")
        return caller
    return f"anon:{user}"


@router.get("/recommendations", response_model=RecommendationList)
def recommendations(request: Request,
                    user: str | None = Query(None, description="rater id; default: the caller"),
                    k: int = Query(10, description=f"how many items, 1..{MAX_K}"),
                    studio: Studio = Depends(get_studio)) -> RecommendationList:
    """"For you": the ``k`` items the person is predicted to like most among those they have
    not rated, compared, flagged or used yet, and up to three settings to generate with."""
    if not 1 <= k <= MAX_K:
        raise ApiError(400, f"k must be in 1..{MAX_K}, got {k}", param="k", code="bad_k")
    rater = _whose(request, studio, user)
    rec = recommender_of(request, studio).recommend(rater, k)
    return RecommendationList(
        user=rater, strategy=rec.strategy, n_signals=rec.n_signals,
        items=[Recommended(item=render_item(studio, s.item), score=s.score,
                           popularity=s.popularity, collaborative=s.collaborative,
                           content=s.content) for s in rec.items],
        settings=[SettingToTry(**s) for s in rec.settings])
