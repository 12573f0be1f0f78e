"""Feedback beyond stars and comparisons: flags with a reason, implicit signals (download,
regenerate, copy), who gave each piece, a person's own feedback listed and deleted, and the
analysis report as a page.

Who rated: with API keys configured, the key's name (``key:NAME``); on a loopback studio without
keys, the anonymous id the web page keeps in the browser (header ``X-Aigc-Rater``, as
``anon:ID``). A person sees and deletes only their own feedback; deleted feedback is gone from
the database, so no export (and no model trained from one) can contain it.
"""

from __future__ import annotations

import re
from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import Field

from aigc.studio.auth import hash_key
from aigc.studio.routes.items import _item
from aigc.studio.schemas import Strict
from aigc.studio.service import ApiError, Studio, get_studio, require_key

router = APIRouter(prefix="/api", tags=["feedback"], dependencies=[Depends(require_key)])

RATER_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
FLAG_REASONS = ("wrong_content", "low_quality", "unsafe", "other")
SIGNALS = ("download", "regenerate", "copy")


def rater_of(request: Request, studio: Studio) -> str:
    """``key:NAME`` for a request with an API key, else ``anon:ID`` from ``X-Aigc-Rater``
    (``anon:unknown`` without one). A malformed id is refused, not silently replaced."""
    auth = request.headers.get("authorization")
    if auth and auth.lower().startswith("bearer ") and studio.key_hashes:
        name = studio.store.api_key_name(hash_key(auth[7:].strip()))
        if name:
            return f"key:{name}"
    rid = request.headers.get("x-aigc-rater")
    if rid is None:
        return "anon:unknown"
    if not RATER_ID.match(rid):
        raise ApiError(400, "X-Aigc-Rater must be 8-64 letters, digits, '_' or '-'",
                       param="X-Aigc-Rater", code="bad_rater_id")
    return f"anon:{rid}"


class FlagRequest(Strict):
    reason: Literal["wrong_content", "low_quality", "unsafe", "other"] = Field(
        ..., description="wrong_content: not what the prompt or class asked for")
    note: str | None = Field(None, max_length=500, description="required with reason 'other'")


class SignalRequest(Strict):
    signal: Literal["download", "regenerate", "copy"]


class Feedback(Strict):
    id: int
    item_id: str
    other_id: str | None = None
    kind: Literal["stars", "comparison", "flag", "signal"]
    value: str
    note: str | None = None
    rater: str
    created: float


class FeedbackList(Strict):
    feedback: list[Feedback]


def _out(row: dict) -> Feedback:
    return Feedback(**{k: row[k] for k in Feedback.model_fields})


@router.post("/items/{item_id}/flags", response_model=Feedback, status_code=201)
def flag_item(item_id: str, body: FlagRequest, request: Request,
              studio: Studio = Depends(get_studio)) -> Feedback:
    """Flag an item: wrong content for its prompt/class, low quality, unsafe, or other (with a
    note)."""
    _item(studio, item_id)
    note = (body.note or "").strip() or None
    if body.reason == "other" and not note:
        raise ApiError(400, "a flag with reason 'other' needs a note saying what is wrong",
                       param="note", code="note_required")
    return _out(studio.store.add_feedback(item_id, "flag", body.reason, rater_of(request, studio),
                                          note=note))


@router.post("/items/{item_id}/signals", response_model=Feedback, status_code=201)
def signal_item(item_id: str, body: SignalRequest, request: Request,
                studio: Studio = Depends(get_studio)) -> Feedback:
    """An implicit signal: the item was downloaded, regenerated or copied."""
    _item(studio, item_id)
    return _out(studio.store.add_feedback(item_id, "signal", body.signal,
                                          rater_of(request, studio)))


@router.get("/feedback", response_model=FeedbackList)
def my_feedback(request: Request, studio: Studio = Depends(get_studio)) -> FeedbackList:
    """Everything the caller (their key, or their browser's id) has given."""
    rows = studio.store.list_feedback(rater=rater_of(request, studio))
    return FeedbackList(feedback=[_out(r) for r in rows])


@router.delete("/feedback/{feedback_id}", status_code=204)
def delete_feedback(feedback_id: int, request: Request,
                    studio: Studio = Depends(get_studio)) -> Response:
    """Delete one piece of one's own feedback (gone from the database and every later
    export)."""
    row = studio.store.get_feedback(feedback_id)
    if row is None:
        raise ApiError(404, f"feedback {feedback_id} not found", "not_found_error",
                       code="feedback_not_found", param="feedback_id")
    if row["rater"] != rater_of(request, studio):
        raise ApiError(403, "this feedback was given by someone else", "permission_error",
                       code="not_yours", param="feedback_id")
    studio.store.delete_feedback(feedback_id)
    return Response(status_code=204)


@router.delete("/feedback", status_code=200)
def delete_all_my_feedback(request: Request, studio: Studio = Depends(get_studio)) -> dict:
    """Delete all of the caller's feedback (privacy)."""
    rater = rater_of(request, studio)
    if rater == "anon:unknown":
        raise ApiError(400, "send X-Aigc-Rater (or an API key) to say whose feedback to delete",
                       param="X-Aigc-Rater", code="rater_required")
    return {"deleted": studio.store.delete_feedback(rater=rater)}


@router.get("/feedback/report", response_class=HTMLResponse)
def feedback_report(studio: Studio = Depends(get_studio)) -> HTMLResponse:
    """The analysis report (the page ``aigc feedback report`` writes), made now."""
    from aigc.loop.report import feedback_report as make_report

    snapshot = studio.store.feedback_snapshot()
    return HTMLResponse(make_report(snapshot, files_dir=studio.store.files_dir))
