"""``/api/jobs``: enqueue a generation, follow its progress (polling, or server-sent events),
cancel or retry it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from aigc.studio.jobs import Channel
from aigc.studio.schemas import (
    ImageJobRequest,
    Job,
    JobEvent,
    JobList,
    MusicJobRequest,
    TextJobRequest,
)
from aigc.studio.service import ApiError, Studio, get_studio, require_key

router = APIRouter(prefix="/api/jobs", tags=["jobs"], dependencies=[Depends(require_key)])

JobRequest = Annotated[ImageJobRequest | TextJobRequest | MusicJobRequest,
                       Body(discriminator="kind")]


@router.post("", response_model=Job, status_code=202)
def create_job(req: JobRequest, request: Request, studio: Studio = Depends(get_studio)) -> Job:
    """Queue an image job (``kind: "image"``), a text job (``kind: "text"``) or a music job
    (``kind: "music"``); follow it with ``GET /api/jobs/{id}/events`` (server-sent events) or
    poll ``GET /api/jobs/{id}``."""
    return Job(**studio.enqueue(req, studio.client_of(request)))


@router.get("", response_model=JobList)
def list_jobs(status: Literal["queued", "running", "done", "failed", "cancelled"] | None = None,
              limit: int = Query(50, ge=1, le=500),
              studio: Studio = Depends(get_studio)) -> JobList:
    return JobList(jobs=[Job(**j, items=[]) for j in studio.store.list_jobs(status, limit)])


def _job(studio: Studio, job_id: str) -> dict:
    job = studio.store.get_job(job_id) if len(job_id) <= 64 else None
    if job is None:
        raise ApiError(404, f"job {job_id!r} not found", "not_found_error", code="job_not_found",
                       param="job_id")
    return job


@router.get("/{job_id}", response_model=Job)
def get_job(job_id: str, studio: Studio = Depends(get_studio)) -> Job:
    return Job(**_job(studio, job_id))


@router.post("/{job_id}/cancel", response_model=Job)
def cancel_job(job_id: str, studio: Studio = Depends(get_studio)) -> Job:
    """Cancel a queued or running job (a running one stops at its next progress point and
    writes nothing). Cancelling a finished job is an error."""
    job = _job(studio, job_id)
    if job["status"] not in ("queued", "running"):
        raise ApiError(409, f"job {job_id} is already {job['status']}", code="job_finished")
    studio.runner.cancel(job_id)
    return Job(**_job(studio, job_id))


@router.post("/{job_id}/retry", response_model=Job, status_code=202)
def retry_job(job_id: str, request: Request, studio: Studio = Depends(get_studio)) -> Job:
    """Queue a new job with the same parameters (and seed) as a finished one."""
    return Job(**studio.retry(_job(studio, job_id), client=studio.client_of(request)))


# ------------------------------------------------------------------------ server-sent events
TERMINAL = ("done", "failed", "cancelled")
RECHECK_S = 10.0  # with no event for this long: re-read the job and send a keep-alive


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


def _event(job: dict[str, Any]) -> dict[str, Any]:
    return JobEvent(id=job["id"], status=job["status"], progress=job["progress"],
                    error=job.get("error"), items=job.get("items") or []).model_dump()


def _apply(state: dict[str, Any], event: str, value: Any) -> dict[str, Any] | None:
    """The state after a worker event, or None when the event changes nothing shown."""
    if event == "running" and state["status"] == "queued":
        return {**state, "status": "running"}
    if event == "progress" and state["status"] in ("queued", "running"):
        # Never backwards, and 1.0 only once done (the items are not stored yet).
        progress = max(state["progress"], min(float(value), 0.99))
        return {**state, "status": "running", "progress": progress}
    if event == "done":
        return _event(value)
    if event == "failed":
        return {**state, "status": "failed", "error": str(value)}
    if event == "cancelled":
        return {**state, "status": "cancelled"}
    return None  # text pieces, repeated "running"


def _sse_event(seq: int, state: dict[str, Any]) -> bytes:
    return f"id: {seq}\ndata: {json.dumps(state)}\n\n".encode()


async def _job_events(studio: Studio, job: dict[str, Any], ch: Channel) -> AsyncIterator[bytes]:
    """The job's state now, then one event per change, until a terminal state.

    Between events this waits on the channel's asyncio queue: no thread and no database
    connection is held. The database is read only at the start and after ``RECHECK_S`` seconds
    without news (in case a change came from elsewhere, e.g. another server process).
    """
    try:
        seq, state = 0, _event(job)
        yield b"retry: 1000\n" + _sse_event(seq, state)
        while state["status"] not in TERMINAL:
            try:
                event, value = await asyncio.wait_for(ch.queue.get(), RECHECK_S)
                new = _apply(state, event, value)
            except TimeoutError:
                fresh = await run_in_threadpool(studio.store.get_job, job["id"])
                new = _event(fresh) if fresh is not None and _event(fresh) != state else None
                if new is None:
                    yield b": keep-alive\n\n"
                    continue
            if new is not None and new != state:
                seq, state = seq + 1, new
                yield _sse_event(seq, state)
    finally:
        studio.runner.close_channel(job["id"], ch)


@router.get("/{job_id}/events", response_class=EventStreamResponse, responses={200: {
    "description": "`text/event-stream`: one event per change of the job; each `data:` line is "
                   "a JobEvent (JSON). The last event has a terminal status (done, failed, "
                   "cancelled) and the stream ends there.",
    "content": {"text/event-stream": {
        "schema": {"type": "string", "description": "server-sent events whose `data:` lines "
                   "are JobEvent objects (#/components/schemas/JobEvent)"},
        "example": 'id: 0\ndata: {"id": "…", "status": "queued", "progress": 0.0, '
                   '"error": null, "items": []}\n\n'
                   'id: 1\ndata: {"id": "…", "status": "running", "progress": 0.0, …}\n\n'
                   'id: 2\ndata: {"id": "…", "status": "done", "progress": 1.0, '
                   '"error": null, "items": ["…"]}\n\n'}}}})
async def job_events(job_id: str, studio: Studio = Depends(get_studio)) -> EventStreamResponse:
    """Live progress of a job as server-sent events (``EventSource`` in a browser): its state
    now, then each change (running, progress, done with its items / failed with its error /
    cancelled). The stream ends after the terminal state; for a finished job that is the first
    event. Needs the API key like every ``/api`` route (browsers' ``EventSource`` cannot send
    one: with keys, poll ``GET /api/jobs/{id}`` instead)."""
    # The channel is opened before the job is read, so no change between the two is lost.
    ch = studio.runner.open_channel(job_id, asyncio.get_running_loop())
    try:
        job = await run_in_threadpool(_job, studio, job_id)
    except BaseException:
        studio.runner.close_channel(job_id, ch)
        raise
    return EventStreamResponse(_job_events(studio, job, ch),
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
