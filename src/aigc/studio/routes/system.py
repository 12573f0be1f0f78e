"""``/health`` and ``/metrics`` (Prometheus text exposition format 0.0.4)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from aigc.studio.schemas import Health
from aigc.studio.service import Studio, get_studio, require_read_key

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health)
def health(studio: Studio = Depends(get_studio)) -> Health:
    return Health(status="ok", models=len(studio.images) + len(studio.texts) + len(studio.musics),
                  jobs=studio.store.job_counts())


def _line(name: str, value: float, **labels: str) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value:g}"
    return f"{name} {value:g}"


@router.get("/metrics", response_class=PlainTextResponse,
            dependencies=[Depends(require_read_key)])
def metrics(studio: Studio = Depends(get_studio)) -> PlainTextResponse:
    s = studio.runner.stats
    n_ratings, n_comparisons = studio.store.rating_counts()
    out = [
        "# HELP aigc_jobs Jobs in the queue table by status.", "# TYPE aigc_jobs gauge",
        *[_line("aigc_jobs", n, status=k) for k, n in studio.store.job_counts().items()],
        "# HELP aigc_jobs_completed_total Jobs finished by this process.",
        "# TYPE aigc_jobs_completed_total counter",
        *[_line("aigc_jobs_completed_total", n, kind=k) for k, n in s.completed.items()],
        "# HELP aigc_jobs_failed_total Jobs failed in this process.",
        "# TYPE aigc_jobs_failed_total counter",
        *[_line("aigc_jobs_failed_total", n, kind=k) for k, n in s.failed.items()],
        "# HELP aigc_job_seconds_total Worker time spent on jobs.",
        "# TYPE aigc_job_seconds_total counter",
        *[_line("aigc_job_seconds_total", v, kind=k) for k, v in s.job_seconds.items()],
        "# HELP aigc_image_batches_total Image batches run.",
        "# TYPE aigc_image_batches_total counter", _line("aigc_image_batches_total", s.batches),
        "# HELP aigc_batched_images_total Images drawn in batches.",
        "# TYPE aigc_batched_images_total counter",
        _line("aigc_batched_images_total", s.batched_images),
        "# HELP aigc_tokens_total Prompt + completion tokens of finished text jobs.",
        "# TYPE aigc_tokens_total counter", _line("aigc_tokens_total", s.tokens),
        "# HELP aigc_jobs_recovered Jobs re-queued at start-up after an unclean stop.",
        "# TYPE aigc_jobs_recovered gauge", _line("aigc_jobs_recovered", s.recovered),
        "# HELP aigc_items Generated items stored.", "# TYPE aigc_items gauge",
        _line("aigc_items", studio.store.count_items()),
        "# HELP aigc_ratings_total Star ratings and pairwise comparisons stored.",
        "# TYPE aigc_ratings_total gauge",
        _line("aigc_ratings_total", n_ratings, type="stars"),
        _line("aigc_ratings_total", n_comparisons, type="pairwise"),
        "# HELP aigc_http_requests_total HTTP requests answered, by method and status.",
        "# TYPE aigc_http_requests_total counter",
        *[_line("aigc_http_requests_total", n, method=m, code=str(c))
          for (m, c), n in sorted(studio.http_requests.items())],
    ]
    return PlainTextResponse("\n".join(out) + "\n",
                             media_type="text/plain; version=0.0.4; charset=utf-8")
