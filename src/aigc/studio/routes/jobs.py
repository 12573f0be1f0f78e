"""``/api/jobs``: enqueue a generation, follow its progress, cancel or retry it."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Query

from aigc.studio.schemas import ImageJobRequest, Job, JobList, MusicJobRequest, TextJobRequest
from aigc.studio.service import ApiError, Studio, get_studio, require_key

router = APIRouter(prefix="/api/jobs", tags=["jobs"], dependencies=[Depends(require_key)])

JobRequest = Annotated[ImageJobRequest | TextJobRequest | MusicJobRequest,
                       Body(discriminator="kind")]


@router.post("", response_model=Job, status_code=202)
def create_job(req: JobRequest, studio: Studio = Depends(get_studio)) -> Job:
    """Queue an image job (``kind: "image"``), a text job (``kind: "text"``) or a music job
    (``kind: "music"``); poll ``GET /api/jobs/{id}`` for its progress and items."""
    if req.kind == "music":
        return Job(**studio.enqueue_music(req))
    job = studio.enqueue_image(req) if req.kind == "image" else studio.enqueue_text(req)
    return Job(**job)


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
def retry_job(job_id: str, studio: Studio = Depends(get_studio)) -> Job:
    """Queue a new job with the same parameters (and seed) as a finished one."""
    return Job(**studio.retry(_job(studio, job_id)))
